"""Opening Qdrant: the embedded engine on disk (default) or a server URL.

On a local path personae runs Qdrant Edge, Qdrant's own engine in process (payload
indexes, write-ahead log), through :class:`~personae.memory._edge.EdgeStore`.
qdrant-client's local mode (``backend="local"``), which scores every filtered search in
Python, stays available for comparison and for reading stores written before; such a
store is migrated to the engine the first time it is opened (see
:func:`migrate_local_store`). A path allows one process at a time: a second process gets
a clear :class:`StoreLockedError` instead of corrupting data.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from qdrant_client import QdrantClient, models

from personae.errors import StoreLockedError
from personae.memory._edge import EDGE_DIR, EdgeStore
from personae.settings import Settings

__all__ = ["open_qdrant", "QdrantHandle", "Backend", "MigrationReport", "migrate_local_store"]

log = logging.getLogger(__name__)

Backend = Literal["edge", "local", "server"]
_MIGRATING = EDGE_DIR + ".migrating"
_LOCAL_FILES = ("meta.json", "collection")
_COPY_PAGE = 1024


class QdrantHandle:
    """A Qdrant client plus the process lock that guards a local path; close it when done.

    ``client`` is a :class:`QdrantClient` (server or qdrant-client local mode) or an
    :class:`EdgeStore` answering the same calls. ``lock`` serialises calls on
    ``client`` across threads; hold it around every client call made from a worker thread.
    """

    def __init__(self, client: QdrantClient | EdgeStore, lock_fd: int | None, location: str, backend: Backend | None = None) -> None:
        self.client = client
        self.lock = threading.RLock()
        self._lock_fd = lock_fd
        self.location = location
        self.backend: Backend = backend or ("edge" if isinstance(client, EdgeStore) else "local" if lock_fd is not None else "server")

    @property
    def is_local(self) -> bool:
        """Whether the store is embedded in this process (edge or qdrant-client local mode)."""
        return self.backend != "server"

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


class MigrationReport(BaseModel):
    """What :func:`migrate_local_store` moved."""

    path: str
    collections: dict[str, int]  # name -> points copied
    backup: str


def _has_local_store(path: Path) -> bool:
    return (path / "meta.json").exists() and (path / "collection").is_dir()


def _copy_collection(source: QdrantClient, target: EdgeStore, name: str) -> int:
    info = source.get_collection(name)
    target.create_collection(name, vectors_config=info.config.params.vectors, metadata=info.config.metadata)
    copied, offset = 0, None
    while True:
        points, offset = source.scroll(name, limit=_COPY_PAGE, offset=offset, with_payload=True, with_vectors=True)
        target.upsert(name, points=[models.PointStruct(id=p.id, vector=p.vector, payload=p.payload or {}) for p in points])
        copied += len(points)
        if offset is None:
            break
    got = target.count(name).count
    if got != copied or got != source.count(name, exact=True).count:
        raise RuntimeError(f"migrating collection {name!r}: copied {copied} points but the engine holds {got}")
    return copied


def _migrate_locked(path: Path) -> MigrationReport:
    staging = path / _MIGRATING
    shutil.rmtree(staging, ignore_errors=True)  # an earlier attempt that did not finish
    copied: dict[str, int] = {}
    source = QdrantClient(path=str(path))
    try:
        target = EdgeStore(staging)
        try:
            for description in source.get_collections().collections:
                copied[description.name] = _copy_collection(source, target, description.name)
        finally:
            target.close()
    finally:
        source.close()
    staging.replace(path / EDGE_DIR)
    backup = path / f"local-mode-backup-{time.strftime('%Y%m%dT%H%M%S')}"
    backup.mkdir()
    for name in _LOCAL_FILES:
        (path / name).replace(backup / name)
    return MigrationReport(path=str(path), collections=copied, backup=str(backup))


def _finish_or_migrate(path: Path) -> MigrationReport | None:
    """Migrate a qdrant-client local store at ``path`` (lock held); ``None`` if there is none."""
    if not _has_local_store(path):
        return None
    if (path / EDGE_DIR).exists():  # migrated, but the old files were not moved aside yet
        backup = path / f"local-mode-backup-{time.strftime('%Y%m%dT%H%M%S')}"
        backup.mkdir()
        for name in _LOCAL_FILES:
            (path / name).replace(backup / name)
        return MigrationReport(path=str(path), collections={}, backup=str(backup))
    report = _migrate_locked(path)
    log.warning(
        "migrated the Qdrant local-mode store at %s to the embedded Qdrant engine (%s); the old files are kept in %s, delete that folder once you are satisfied",
        path, ", ".join(f"{k}: {v} points" for k, v in report.collections.items()) or "no collections", report.backup,
    )
    return report


def _lock(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".personae.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(str(path), "run several processes against a Qdrant server instead (set PERSONAE_QDRANT_URL)") from None
    return fd


def migrate_local_store(path: str | os.PathLike) -> MigrationReport | None:
    """Move a store written by qdrant-client's local mode at ``path`` to the embedded engine.

    Every collection is copied (ids, vectors, payloads, metadata) into ``path/edge``
    and checked by count; the old files then move to ``path/local-mode-backup-<time>``.
    A crash midway leaves the old store untouched (the copy is redone on the next open).
    Returns ``None`` when there is nothing to migrate. :func:`open_qdrant` calls this
    itself; call it to migrate ahead of a run.
    """
    local = Path(path)
    fd = _lock(local)
    try:
        return _finish_or_migrate(local)
    finally:
        os.close(fd)


def open_qdrant(
    settings: Settings | None = None,
    *,
    path: str | os.PathLike | None = None,
    url: str | None = None,
    backend: Literal["edge", "local"] = "edge",
) -> QdrantHandle:
    """Open Qdrant at ``url`` (server) or ``path`` (embedded), defaulting to ``settings``.

    ``backend`` picks the embedded engine for a path: ``"edge"`` (default; a local-mode
    store found there is migrated first) or ``"local"`` (qdrant-client local mode, kept
    for comparison; its stores are not read by the engine until migrated).
    """
    settings = settings or Settings()
    url = url or (None if path else settings.qdrant_url)
    if url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantHandle(QdrantClient(url=url, api_key=key), None, url, "server")
    local = Path(path or settings.qdrant_path)
    fd = _lock(local)
    try:
        if backend == "local":
            return QdrantHandle(QdrantClient(path=str(local)), fd, str(local), "local")
        _finish_or_migrate(local)
        return QdrantHandle(EdgeStore(local / EDGE_DIR), fd, str(local), "edge")
    except BaseException:
        os.close(fd)
        raise
