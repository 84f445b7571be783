"""Qdrant Edge (Qdrant's own engine, in process) behind the part of QdrantClient's API personae uses.

One folder per collection under the store's ``edge/`` folder: ``shard/`` holds the
:class:`qdrant_edge.EdgeShard` (segments, payload indexes, write-ahead log) and
``collection.json`` the vector size, distance and metadata (a shard has no names or
metadata of its own). Requests use ``qdrant_client.models``, so the memory
and de-duplication code is the same against a Qdrant server and against the embedded
engine (results are light records with the same ``id``, ``payload``, ``vector`` and
``score`` fields). Not thread-safe by contract: callers hold ``QdrantHandle.lock`` (the shard
itself may be called from any thread).

No optimizer runs in process, so a collection's points stay in plain (exact)
segments: a filtered search goes through the keyword payload indexes and scores the
matching vectors exactly, which at personae's per-agent sizes is faster than an
HNSW graph is to build. :meth:`EdgeStore.optimize` builds the graph on demand.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import models

from personae.errors import ConfigError

__all__ = ["EdgeStore", "EdgeCollectionInfo", "EdgeQueryResult", "EdgeRecord", "EdgeScoredPoint", "edge_filter", "edge_config"]

log = logging.getLogger(__name__)

EDGE_DIR = "edge"
_META = "collection.json"
_SHARD = "shard"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_DISTANCE = {
    models.Distance.COSINE: qe.Distance.Cosine,
    models.Distance.DOT: qe.Distance.Dot,
    models.Distance.EUCLID: qe.Distance.Euclid,
    models.Distance.MANHATTAN: qe.Distance.Manhattan,
}
_SCHEMA = {
    models.PayloadSchemaType.KEYWORD: qe.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.INTEGER: qe.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: qe.PayloadSchemaType.Float,
    models.PayloadSchemaType.BOOL: qe.PayloadSchemaType.Bool,
    models.PayloadSchemaType.TEXT: qe.PayloadSchemaType.Text,
    models.PayloadSchemaType.UUID: qe.PayloadSchemaType.Uuid,
}


@dataclass(frozen=True)
class _Config:
    params: Any  # .vectors: models.VectorParams
    metadata: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class EdgeRecord:
    """A point as ``retrieve`` and ``scroll`` answer it (the fields of ``models.Record`` personae reads)."""

    id: int | str
    payload: dict[str, Any] | None
    vector: list[float] | None


@dataclass(frozen=True, slots=True)
class EdgeScoredPoint:
    """A point as ``query_points`` answers it (the fields of ``models.ScoredPoint`` personae reads)."""

    id: int | str
    score: float
    payload: dict[str, Any] | None
    vector: list[float] | None


@dataclass(frozen=True)
class EdgeQueryResult:
    """What ``query_points`` answers: the scored points, best first."""

    points: list[EdgeScoredPoint]


@dataclass(frozen=True)
class EdgeCollectionInfo:
    """What ``get_collection`` answers for an edge collection (the fields personae reads)."""

    config: _Config
    points_count: int
    payload_schema: dict[str, str] = field(default_factory=dict)


def edge_config(size: int, distance: models.Distance = models.Distance.COSINE, *, wal: bool = True) -> qe.EdgeConfig:
    """The shard configuration for vectors of ``size`` (an HNSW graph is built only by ``optimize``)."""
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=size, distance=_DISTANCE[distance]),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
        payload_memory=qe.Memory.Cached,
        wal_enabled=wal,
    )


def _match(match: Any) -> Any:
    if isinstance(match, models.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, models.MatchAny):
        return qe.MatchAny(list(match.any))
    if isinstance(match, models.MatchExcept):
        return qe.MatchExcept(list(match.except_))
    raise ConfigError("unsupported filter match for the embedded Qdrant engine", field="filter", expected="MatchValue, MatchAny or MatchExcept", got=type(match).__name__)


def _condition(cond: Any) -> Any:
    if isinstance(cond, models.FieldCondition):
        if cond.match is not None:
            return qe.FieldCondition(key=cond.key, match=_match(cond.match))
        if cond.range is not None:
            r = cond.range
            return qe.FieldCondition(key=cond.key, range=qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
    elif isinstance(cond, models.HasIdCondition):
        return qe.HasIdCondition(set(_ids(cond.has_id)))
    elif isinstance(cond, models.Filter):
        return edge_filter(cond)
    raise ConfigError("unsupported filter condition for the embedded Qdrant engine", field="filter", expected="a field match or range, has_id, or a nested filter", got=repr(cond))


def _conditions(conds: Any) -> list[Any] | None:
    if conds is None:
        return None
    return [_condition(c) for c in (conds if isinstance(conds, list) else [conds])]


def edge_filter(flt: models.Filter | None) -> qe.Filter | None:
    """The edge filter equal to a qdrant-client filter (field matches, ranges, ids, nesting)."""
    if flt is None:
        return None
    return qe.Filter(must=_conditions(flt.must), should=_conditions(flt.should), must_not=_conditions(flt.must_not))


def _ids(ids: Iterable[Any]) -> list[Any]:
    return [i if isinstance(i, int) else uuid.UUID(str(i)) for i in ids]


def _out_id(i: Any) -> Any:
    return i if isinstance(i, int) else str(i)


def _with_payload(value: bool | Sequence[str]) -> Any:
    return value if isinstance(value, bool) else qe.PayloadSelector.Include(list(value))


def _record(r: Any) -> EdgeRecord:
    return EdgeRecord(_out_id(r.id), r.payload, r.vector)


class EdgeStore:
    """Collections of one store folder, each an embedded Qdrant Edge shard.

    Answers ``collection_exists``, ``create_collection``, ``get_collection``,
    ``get_collections``, ``delete_collection``, ``create_payload_index``, ``retrieve``,
    ``query_points``, ``scroll``, ``count``, ``upsert``, ``delete`` and ``close`` with
    QdrantClient's arguments and result types. Shards open on first use and stay open.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    # ---- collections -------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ConfigError("bad collection name", field="collection", expected="1-128 letters, digits, '_', '-' or '.'", got=name)
        return self.root / name

    def collection_exists(self, name: str) -> bool:
        return name in self._shards or (self._dir(name) / _META).exists()

    def create_collection(self, name: str, vectors_config: models.VectorParams, metadata: dict[str, Any] | None = None, **_: Any) -> bool:
        folder = self._dir(name)
        if self.collection_exists(name):
            raise ConfigError(f"collection {name!r} already exists", file=str(folder))
        if folder.exists():  # a creation interrupted before its metadata was written
            shutil.rmtree(folder)
        shard = qe.EdgeShard.create(str(folder / _SHARD), edge_config(vectors_config.size, vectors_config.distance))
        meta = {"size": vectors_config.size, "distance": vectors_config.distance.value, "metadata": metadata}
        tmp = folder / (_META + ".tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        tmp.replace(folder / _META)
        self._shards[name], self._meta[name] = shard, meta
        return True

    def _collection_meta(self, name: str) -> dict[str, Any]:
        meta = self._meta.get(name)
        if meta is None:
            path = self._dir(name) / _META
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"collection {name!r} not found", file=str(self._dir(name))) from None
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read the collection's metadata: {exc}", file=str(path), expected='{"size": int, "distance": str, "metadata": object}') from None
            self._meta[name] = meta
        return meta

    def shard(self, name: str) -> qe.EdgeShard:
        """The open shard of collection ``name`` (loaded from disk on first use)."""
        shard = self._shards.get(name)
        if shard is None:
            self._collection_meta(name)
            shard = self._shards[name] = qe.EdgeShard.load(str(self._dir(name) / _SHARD))
        return shard

    def get_collection(self, name: str) -> EdgeCollectionInfo:
        meta = self._collection_meta(name)
        info = self.shard(name).info()
        params = models.VectorParams(size=int(meta["size"]), distance=models.Distance(meta["distance"]))
        schema = {key: str(idx.data_type) for key, idx in info.payload_schema.items()}
        return EdgeCollectionInfo(config=_Config(params=models.CollectionParams(vectors=params), metadata=meta.get("metadata")), points_count=info.points_count, payload_schema=schema)

    def get_collections(self) -> models.CollectionsResponse:
        names = sorted(p.parent.name for p in self.root.glob(f"*/{_META}"))
        return models.CollectionsResponse(collections=[models.CollectionDescription(name=n) for n in names])

    def delete_collection(self, name: str, **_: Any) -> bool:
        shard = self._shards.pop(name, None)
        self._meta.pop(name, None)
        if shard is not None:
            shard.close()
        folder = self._dir(name)
        if not folder.exists():
            return False
        (folder / _META).unlink(missing_ok=True)  # first, so a crash leaves no half-deleted collection
        shutil.rmtree(folder)
        return True

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: models.PayloadSchemaType, **_: Any) -> None:
        schema = _SCHEMA.get(models.PayloadSchemaType(field_schema))
        if schema is None:
            raise ConfigError("unsupported payload index type for the embedded Qdrant engine", field="field_schema", expected=", ".join(s.value for s in _SCHEMA), got=field_schema)
        self.shard(collection_name).update(qe.UpdateOperation.create_field_index(field_name, schema))

    # ---- reads -------------------------------------------------------------------
    def retrieve(self, collection_name: str, ids: Sequence[Any], with_payload: bool | Sequence[str] = True, with_vectors: bool = False, **_: Any) -> list[EdgeRecord]:
        if not ids:
            return []
        return [_record(r) for r in self.shard(collection_name).retrieve(_ids(ids), _with_payload(with_payload), bool(with_vectors))]

    def query_points(
        self,
        collection_name: str,
        query: Sequence[float] | np.ndarray,
        query_filter: models.Filter | None = None,
        limit: int = 10,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
        score_threshold: float | None = None,
        **_: Any,
    ) -> EdgeQueryResult:
        request = qe.QueryRequest(
            limit=limit, query=qe.Query.Nearest(np.asarray(query, dtype=np.float32).tolist()), filter=edge_filter(query_filter),
            with_payload=_with_payload(with_payload), with_vector=bool(with_vectors), score_threshold=score_threshold,
        )
        points = [
            EdgeScoredPoint(_out_id(p.id), p.score, p.payload, p.vector)
            for p in self.shard(collection_name).query(request)
        ]
        return EdgeQueryResult(points)

    def scroll(
        self,
        collection_name: str,
        scroll_filter: models.Filter | None = None,
        limit: int = 10,
        offset: Any = None,
        with_payload: bool | Sequence[str] = True,
        with_vectors: bool = False,
        **_: Any,
    ) -> tuple[list[EdgeRecord], Any]:
        request = qe.ScrollRequest(
            offset=None if offset is None else _ids([offset])[0], limit=limit, filter=edge_filter(scroll_filter),
            with_payload=_with_payload(with_payload), with_vector=bool(with_vectors),
        )
        points, following = self.shard(collection_name).scroll(request)
        return [_record(r) for r in points], None if following is None else _out_id(following)

    def count(self, collection_name: str, count_filter: models.Filter | None = None, exact: bool = True, **_: Any) -> models.CountResult:
        return models.CountResult(count=self.shard(collection_name).count(qe.CountRequest(exact=exact, filter=edge_filter(count_filter))))

    # ---- writes ------------------------------------------------------------------
    def upsert(self, collection_name: str, points: Sequence[models.PointStruct] | models.Batch, **_: Any) -> None:
        if isinstance(points, models.Batch):
            payloads = points.payloads or [None] * len(points.ids)
            batch = [qe.Point(i, list(v), p) for i, v, p in zip(_ids(points.ids), points.vectors, payloads)]  # type: ignore[arg-type]
        else:
            batch = [qe.Point(i, list(p.vector), p.payload) for i, p in zip(_ids(p.id for p in points), points)]  # type: ignore[arg-type]
        if batch:
            self.shard(collection_name).update(qe.UpdateOperation.upsert_points(batch))

    def delete(self, collection_name: str, points_selector: Any, **_: Any) -> None:
        shard = self.shard(collection_name)
        if isinstance(points_selector, models.FilterSelector):
            shard.update(qe.UpdateOperation.delete_points_by_filter(edge_filter(points_selector.filter)))
        elif isinstance(points_selector, models.PointIdsList):
            shard.update(qe.UpdateOperation.delete_points(_ids(points_selector.points)))
        else:
            shard.update(qe.UpdateOperation.delete_points(_ids(points_selector)))

    def optimize(self, collection_name: str) -> bool:
        """Run the engine's optimizers (HNSW, merges) on a collection, blocking; whether anything changed."""
        return self.shard(collection_name).optimize()

    def close(self) -> None:
        """Flush and close every open shard."""
        shards, self._shards = self._shards, {}
        for shard in shards.values():
            try:
                shard.flush()
            finally:
                shard.close()
