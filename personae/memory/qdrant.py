"""Opening Qdrant: embedded local mode on disk (default) or a server URL.

Local mode allows one client per path per process, and one process per path:
a second process gets a clear :class:`StoreLockedError` instead of corrupting data.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from qdrant_client import QdrantClient

from personae.errors import StoreLockedError
from personae.settings import Settings

__all__ = ["open_qdrant", "QdrantHandle"]


class QdrantHandle:
    """A Qdrant client plus the process lock that guards a local path; close it when done.

    ``lock`` serialises calls on ``client`` across threads (local mode is not
    thread-safe); hold it around every client call made from a worker thread.
    """

    def __init__(self, client: QdrantClient, lock_fd: int | None, location: str) -> None:
        self.client = client
        self.lock = threading.RLock()
        self._lock_fd = lock_fd
        self.location = location

    @property
    def is_local(self) -> bool:
        return self._lock_fd is not None

    def close(self) -> None:
        """Close the client and release the path lock."""
        try:
            self.client.close()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> QdrantHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_qdrant(settings: Settings | None = None, *, path: str | os.PathLike | None = None, url: str | None = None) -> QdrantHandle:
    """Open Qdrant at ``url`` (server) or ``path`` (local), defaulting to ``settings``."""
    settings = settings or Settings()
    url = url or (None if path else settings.qdrant_url)
    if url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantHandle(QdrantClient(url=url, api_key=key), None, url)
    local = Path(path or settings.qdrant_path)
    local.mkdir(parents=True, exist_ok=True)
    fd = os.open(local / ".personae.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(str(local), "run several processes against a Qdrant server instead (set PERSONAE_QDRANT_URL)") from None
    try:
        client = QdrantClient(path=str(local))
    except Exception:
        os.close(fd)
        raise
    return QdrantHandle(client, fd, str(local))
