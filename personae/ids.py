"""Stable ids from canonical content (hashlib, never the salted built-in ``hash``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_json", "content_hash", "stable_id"]


def canonical_json(value: Any) -> str:
    """Serialise ``value`` deterministically: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: Any, *, length: int = 64) -> str:
    """SHA-256 hex digest of the canonical JSON of ``value``, cut to ``length`` chars."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:length]


def stable_id(prefix: str, *parts: Any, length: int = 16) -> str:
    """An id like ``conv-3f2a…`` derived only from ``parts`` (seed, content, indices)."""
    return f"{prefix}-{content_hash(list(parts), length=length)}"
