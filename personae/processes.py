"""Which process owns a record, and whether that process has certainly ended.

A tracked run records its owner (host, pid, and on Linux the boot, pid namespace and the
process's start time) so that a later process can tell a run whose process was killed
from one that is still running. The check is conservative: it answers "gone" only when
the owner ran on this host, under this boot and pid namespace, and its pid is free, a
zombie, or now belongs to a process started at another time. A run on another host or
container, or one left by a machine that has since restarted, is never judged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcessOwner"]

_TAG = "personae.owner."


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time in clock ticks since boot)`` of ``pid`` from ``/proc``; ``None`` where unreadable."""
    text = _read(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (fields[0], fields[19]) if len(fields) > 19 else None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


@dataclass(frozen=True)
class ProcessOwner:
    """The process that owns something (e.g. an MLflow run), as plain strings.

    ``boot_id``, ``pid_namespace`` and ``started`` are ``None`` where the OS does not
    expose them (outside Linux).
    """

    host: str
    pid: int
    boot_id: str | None = None
    pid_namespace: str | None = None
    started: str | None = None

    @classmethod
    def current(cls) -> ProcessOwner:
        """This process."""
        pid = os.getpid()
        stat = _stat(pid)
        try:
            namespace: str | None = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = None
        return cls(
            host=socket.gethostname(), pid=pid, boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=namespace, started=stat[1] if stat else None,
        )

    def tags(self) -> dict[str, str]:
        """The owner as string tags (``personae.owner.host``, ``.pid``, …); unknown parts are left out."""
        values = {"host": self.host, "pid": str(self.pid), "boot_id": self.boot_id, "pid_namespace": self.pid_namespace, "started": self.started}
        return {_TAG + k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> ProcessOwner | None:
        """The owner recorded in ``tags``, or ``None`` when they name none (e.g. a run of an older version)."""
        host, pid = tags.get(_TAG + "host"), tags.get(_TAG + "pid")
        if not host or not pid or not pid.isdigit():
            return None
        return cls(
            host=host, pid=int(pid), boot_id=tags.get(_TAG + "boot_id"),
            pid_namespace=tags.get(_TAG + "pid_namespace"), started=tags.get(_TAG + "started"),
        )

    def has_ended(self, here: ProcessOwner | None = None) -> bool:
        """Whether this owner's process has certainly ended, as seen from the process ``here`` (default: this one).

        ``False`` whenever it cannot be told from here: another host, another boot (the
        same host name may be another machine), another pid namespace (a container).
        """
        here = here or ProcessOwner.current()
        if self.host != here.host:
            return False
        for mine, theirs in ((self.boot_id, here.boot_id), (self.pid_namespace, here.pid_namespace)):
            if mine != theirs:
                return False
        if self.pid == here.pid:
            return self.started is not None and here.started is not None and self.started != here.started
        if not _pid_exists(self.pid):
            return True
        stat = _stat(self.pid)
        if stat is None:
            return False
        state, started = stat
        return state in ("Z", "X") or (self.started is not None and started != self.started)
