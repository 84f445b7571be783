"""The Qdrant collection that holds every agent's memories (blocking calls).

One collection, cosine distance, created on first use with the embedder's
dimension; the embedder's name is kept in the collection metadata so a store
written with one embedder is not searched with another. ``agent_id``,
``conversation_id`` and ``kind`` have keyword payload indexes (on a server and in
the embedded engine; qdrant-client local mode has none). Callers hold
``handle.lock`` around every method.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import models

from personae.errors import ConfigError
from personae.memory.qdrant import QdrantHandle

__all__ = ["MemoryCollection", "agent_filter"]

log = logging.getLogger(__name__)

_UPSERT_BATCH = 512
_SCROLL_PAGE = 2048
_INDEXED_FIELDS = ("agent_id", "conversation_id", "kind")


def agent_filter(
    agent_id: str | None,
    *,
    conversation_id: str | None = None,
    exclude_conversation_id: str | None = None,
    kinds: Sequence[str] | None = None,
) -> models.Filter | None:
    """The Qdrant filter for one agent's memories (optionally one conversation / some kinds)."""
    must: list[models.Condition] = []
    must_not: list[models.Condition] = []
    if agent_id is not None:
        must.append(models.FieldCondition(key="agent_id", match=models.MatchValue(value=agent_id)))
    if conversation_id is not None:
        must.append(models.FieldCondition(key="conversation_id", match=models.MatchValue(value=conversation_id)))
    if exclude_conversation_id is not None:
        must_not.append(models.FieldCondition(key="conversation_id", match=models.MatchValue(value=exclude_conversation_id)))
    if kinds:
        must.append(models.FieldCondition(key="kind", match=models.MatchAny(any=list(kinds))))
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


class MemoryCollection:
    """Blocking operations on the memory collection."""

    def __init__(self, handle: QdrantHandle, name: str, *, dim: int, embedder_name: str) -> None:
        self.handle = handle
        self.client = handle.client
        self.name = name
        self.dim = dim
        self.embedder_name = embedder_name
        self._ready = False

    def exists(self) -> bool:
        """Whether the collection exists (without creating it)."""
        return self._ready or self.client.collection_exists(self.name)

    def ensure(self) -> None:
        """Create the collection on first use, or check that it fits the embedder."""
        if self._ready:
            return
        if not self.client.collection_exists(self.name):
            self.client.create_collection(
                self.name,
                vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                metadata={"embedder": self.embedder_name, "schema": "personae.memory/1"},
            )
            self._index(_INDEXED_FIELDS)
            log.info("created memory collection %r (dim %d, %s) at %s", self.name, self.dim, self.embedder_name, self.handle.location)
        else:
            info = self._check_existing()
            if self.handle.backend == "edge":  # e.g. a collection migrated from local mode
                self._index([key for key in _INDEXED_FIELDS if key not in info.payload_schema])
        self._ready = True

    def _index(self, keys: Sequence[str]) -> None:
        if self.handle.backend == "local":  # local mode ignores payload indexes (and warns)
            return
        for key in keys:
            self.client.create_payload_index(self.name, key, models.PayloadSchemaType.KEYWORD)

    def _check_existing(self) -> Any:
        info = self.client.get_collection(self.name)
        params = info.config.params.vectors
        size = params.size if isinstance(params, models.VectorParams) else None
        if size != self.dim:
            raise ConfigError(
                f"memory collection {self.name!r} at {self.handle.location} has vectors of another size",
                field="memory.collection",
                expected=f"dimension {self.dim} ({self.embedder_name}); use another collection name for another embedder",
                got=size,
            )
        stored = (info.config.metadata or {}).get("embedder")
        if stored is not None and stored != self.embedder_name:
            raise ConfigError(
                f"memory collection {self.name!r} at {self.handle.location} was written with another embedder",
                field="memory.collection",
                expected=f"embedder {stored!r}, or another collection name for {self.embedder_name!r}",
                got=self.embedder_name,
            )
        return info

    # ---- reads -----------------------------------------------------------
    def get(self, point_ids: Sequence[str], *, vectors: bool = False) -> list[models.Record]:
        """Points by id (missing ids are skipped)."""
        if not point_ids:
            return []
        return self.client.retrieve(self.name, ids=list(point_ids), with_payload=True, with_vectors=vectors)

    def search(self, vector: np.ndarray, flt: models.Filter | None, limit: int) -> list[models.ScoredPoint]:
        """Nearest points to ``vector`` among those matching ``flt``, with payloads and vectors."""
        result = self.client.query_points(
            self.name, query=vector.tolist(), query_filter=flt, limit=limit, with_payload=True, with_vectors=True
        )
        return result.points

    def scroll(self, flt: models.Filter | None, *, payload: bool | list[str] = True) -> Iterator[models.Record]:
        """Every point matching ``flt`` (no vectors), page by page."""
        offset: Any = None
        while True:
            points, offset = self.client.scroll(
                self.name, scroll_filter=flt, limit=_SCROLL_PAGE, offset=offset, with_payload=payload, with_vectors=False
            )
            yield from points
            if offset is None:
                return

    def count(self, flt: models.Filter | None) -> int:
        """How many points match ``flt``."""
        return self.client.count(self.name, count_filter=flt, exact=True).count

    # ---- writes ----------------------------------------------------------
    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        """Write ``points`` in batches."""
        for start in range(0, len(points), _UPSERT_BATCH):
            self.client.upsert(self.name, points=list(points[start : start + _UPSERT_BATCH]), wait=True)

    def delete(self, flt: models.Filter) -> None:
        """Delete every point matching ``flt``."""
        self.client.delete(self.name, points_selector=models.FilterSelector(filter=flt), wait=True)
