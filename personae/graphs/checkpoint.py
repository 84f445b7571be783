"""The SQLite checkpointer conversations run under (LangGraph's ``AsyncSqliteSaver``)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["sqlite_checkpointer", "checkpointed_threads"]


@asynccontextmanager
async def sqlite_checkpointer(path: str | os.PathLike, *, fsync_every_commit: bool = False) -> AsyncIterator[object]:
    """An ``AsyncSqliteSaver`` on ``path`` in WAL mode.

    By default commits are not fsynced (``synchronous=NORMAL``): a killed process
    loses nothing (the log is in the OS cache), only a power cut may drop the last
    steps, which a rerun then redoes. Checkpoint writes are then CPU-bound instead of
    waiting on the disk for every LangGraph step. ``fsync_every_commit`` restores
    full durability.
    """
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={'FULL' if fsync_every_commit else 'NORMAL'}")
        await conn.execute("PRAGMA busy_timeout=30000")
        saver = AsyncSqliteSaver(conn)
        try:
            yield saver
        finally:
            # A batch that stops early cancels steps between a checkpoint write and its commit,
            # and LangGraph's own write tasks of cancelled steps may still be running. A
            # statement kept alive by a traceback then stops SQLite from really closing the
            # connection, and the zombie keeps the open transaction and the write lock: the
            # rerun on the same file got "database is locked". So: under the saver's lock (every
            # saver operation takes it, so no write slips in between), roll back and close; what
            # the rollback discards is the unfinished step, which a rerun repeats.
            async with saver.lock:
                with contextlib.suppress(sqlite3.Error, ValueError):  # a connection already broken: closing is all that is left
                    await conn.rollback()
                await conn.close()


async def checkpointed_threads(saver: object) -> set[str]:
    """The thread ids holding checkpoints in a saver made by :func:`sqlite_checkpointer` (one query)."""
    await saver.setup()  # type: ignore[attr-defined]
    async with saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints") as cursor:  # type: ignore[attr-defined]
        return {row[0] for row in await cursor.fetchall()}
