"""A local ``prefect server start`` (SQLite under the data dir), run as a managed subprocess.

``personae serve`` uses it when no Prefect API is configured: schedules need a real
server (Prefect's ephemeral API does not schedule). The server's home is locked, so
a second server on the same SQLite database fails clearly instead of corrupting it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from personae.errors import PersonaeError, StoreLockedError
from personae.settings import Settings

__all__ = [
    "LocalPrefectServer",
    "PrefectServerError",
    "configured_api_url",
    "free_port",
    "prefect_api",
    "prefect_server_env",
    "use_api_url",
]

log = logging.getLogger(__name__)


class PrefectServerError(PersonaeError):
    """The local Prefect server did not start (the message points at its log)."""


def free_port(host: str = "127.0.0.1", preferred: int | None = None) -> int:
    """``preferred`` if it is free on ``host``, else a free port the OS picks."""
    if preferred:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            try:
                sock.bind((host, preferred))
                return preferred
            except OSError:
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prefect_server_env(home: Path, *, scheduler_loop_s: float, analytics: bool = False) -> dict[str, str]:
    """Environment for a server process whose database lives under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "true" if analytics else "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": str(scheduler_loop_s),
            "DO_NOT_TRACK": env.get("DO_NOT_TRACK", "1"),
        }
    )
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: stop if personae dies
    except OSError:
        pass


class LocalPrefectServer:
    """``prefect server start`` as a child process; use as a context manager.

    Args:
        home: ``PREFECT_HOME`` of the server; its SQLite database is ``home/prefect.db``.
        host: interface to bind (loopback by default).
        port: port; ``None`` means 4200 if free, else any free port; ``0`` any free port.
        ui: serve the Prefect UI (off makes start-up faster).
        scheduler_loop_s: how often the scheduler looks for runs to create.
        startup_timeout_s: how long to wait for ``/api/health``.
    """

    def __init__(
        self,
        home: str | os.PathLike,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ui: bool = True,
        scheduler_loop_s: float = 10.0,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.home = Path(home).expanduser().resolve()
        self.host = host
        self.port = port
        self.ui = ui
        self.scheduler_loop_s = scheduler_loop_s
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self._lock_fd: int | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        """Base URL (the UI, when enabled)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        """The value for ``PREFECT_API_URL``."""
        return f"{self.url}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def _lock(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / ".personae-server.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(
                str(self.home),
                "another personae process runs a Prefect server on this database; "
                "set PREFECT_API_URL to that server instead of starting a second one",
            ) from None
        self._lock_fd = fd

    def start(self) -> LocalPrefectServer:
        """Start the server and wait until it is healthy."""
        if self.process is not None:
            return self
        self._lock()
        self.port = free_port(self.host, 4200 if self.port is None else (self.port or None))
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(self.port)]
        command.append("--ui" if self.ui else "--no-ui")
        env = prefect_server_env(self.home, scheduler_loop_s=self.scheduler_loop_s)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.info("starting Prefect server on %s (home %s)", self.url, self.home)
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=not sys.platform.startswith("linux"),
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        """Whether ``/api/health`` answers."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:  # noqa: S310 - loopback
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrefectServerError(
                    f"the Prefect server exited with code {self.process.returncode} during start-up; see {self.log_path}"
                )
            if self.healthy():
                log.info("Prefect server is up at %s", self.url)
                return
            time.sleep(0.5)
        raise PrefectServerError(f"the Prefect server did not answer within {self.startup_timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and release the lock."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def configured_api_url(settings: Settings | None = None) -> str | None:
    """The Prefect API the user configured (``PREFECT_API_URL``, settings or Prefect profile), if any."""
    if settings is not None and settings.prefect_api_url:
        return settings.prefect_api_url
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


@contextmanager
def use_api_url(url: str) -> Iterator[None]:
    """Point this process (and the flow-run subprocesses it starts) at the Prefect API ``url``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextmanager
def prefect_api(
    settings: Settings,
    *,
    ui: bool = True,
    port: int | None = None,
    scheduler_loop_s: float = 10.0,
    on_start: Callable[[LocalPrefectServer], None] | None = None,
) -> Iterator[tuple[str, LocalPrefectServer | None]]:
    """A real Prefect API for the block: the configured one, else a local server under the data dir.

    Yields ``(api_url, server)``; ``server`` is ``None`` when an existing API is used.
    The local server is stopped when the block ends, however it ends.
    """
    configured = configured_api_url(settings)
    if configured:
        with use_api_url(configured):
            yield configured, None
        return
    server = LocalPrefectServer(settings.root / "prefect", ui=ui, port=port, scheduler_loop_s=scheduler_loop_s)
    with server:
        if on_start is not None:
            on_start(server)
        with use_api_url(server.api_url):
            yield server.api_url, server
