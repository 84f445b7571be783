"""Persistent, content-addressed response cache (SQLite).

The key is a SHA-256 over provider, model and the canonical request (messages,
parameters, seed, response format, replicate): never the wall clock, so an identical
rerun replays every reply without calling a model. The gateway stores a reply only once
it has passed its validation, so a failure is never replayed.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from personae.ids import content_hash
from personae.llm.base import LLMRequest, LLMResponse

__all__ = ["ResponseCache", "cache_key"]


def cache_key(provider: str, model: str, request: LLMRequest) -> str:
    """The content address of a request to ``provider``/``model``."""
    return content_hash({"provider": provider, "model": model, "request": request.cache_payload()})


class ResponseCache:
    """SQLite-backed map from cache key to response; safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> LLMResponse | None:
        """The stored response for ``key``, marked ``cached``, or ``None``."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        response = LLMResponse.model_validate_json(row[0])
        return response.model_copy(update={"cached": True, "latency_s": 0.0})

    def put(self, key: str, response: LLMResponse) -> None:
        """Store ``response`` under ``key`` (last write wins)."""
        payload = response.model_copy(update={"cached": False}).model_dump_json()
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO responses (key, response) VALUES (?, ?)", (key, payload))

    def delete(self, key: str) -> None:
        """Forget the response stored under ``key``, if any."""
        with self._lock:
            self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()
