"""Semantic de-duplication of personas: nearest-neighbour checks in the embedded Qdrant engine.

Each persona is embedded (injected :class:`~personae.embeddings.Embedder`) from
:func:`persona_text`. A candidate whose cosine similarity to any accepted persona
is at or above the threshold is a near-duplicate.

Accepted vectors go to a Qdrant Edge shard in a temporary folder (under
``workdir`` when given, e.g. the run's output folder; removed by :meth:`DedupIndex.close`),
which answers each candidate's nearest neighbour from its HNSW index in batched
queries. The most recent ``exact_tail`` accepted vectors, not yet indexed, are
checked exactly with a float32 matrix product; every ``exact_tail`` acceptances
they move into the shard, which then indexes them. Memory stays bounded: the
process holds the tail, the ids and one float per persona, the shard holds the
vectors on disk. Below ``exact_tail`` personas every check is exact.

Qdrant (an optional handle, a dedicated collection) is the persistent store that a
resumed run reloads vectors from, and that other parts can search. The index also
gives, for every accepted persona, its highest similarity to any other one, which
gives the population's uniqueness (mean nearest-neighbour distance).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from personae.embeddings.base import Embedder, normalize
from personae.errors import ConfigError
from personae.ids import content_hash
from personae.memory.qdrant import QdrantHandle
from personae.models import Persona
from personae.population.mapping import META_KEY, format_value

__all__ = ["DedupIndex", "Scan", "persona_text", "point_id"]

log = logging.getLogger(__name__)
_UPSERT_CHUNK = 512
_QUERY_CHUNK = 1024
_SCROLL_PAGE = 4096
_BLOCK = 1024
_NN_HITS = 8
_ROW_CHUNK = 8192
_HNSW_EF = 64
_M = 16  # m=8 / ef_construct=16 built 2.5x faster but missed 16 % of the planted near-duplicates at 100k (bench/dedup.py)
_EF_CONSTRUCT = 32


def persona_text(persona: Persona, *, include_description: bool = True) -> str:
    """The text a persona is embedded from: its description, then every attribute value.

    Without crafting the description only restates attributes, so the engine then
    embeds the attribute values alone (``include_description=False``).
    """
    values = "; ".join(v if type(v) is str else format_value(v) for k, v in persona.attributes.items() if k != META_KEY)
    return f"{persona.description}\n{values}" if include_description else values


def point_id(persona_id: str) -> str:
    """The Qdrant point id (a UUID) of a persona id."""
    return str(uuid.UUID(hex=content_hash(persona_id, length=32)))


@dataclass
class Scan:
    """Similarities of a batch of vectors to the index at scan time."""

    col_max: np.ndarray  # best similarity of each batch vector to the index (-1 if empty)
    col_arg: np.ndarray  # position in the index of that best match (-1 if empty)
    row_max: np.ndarray | None = None  # best similarity of each exact-tail vector to the batch
    hits: list[list[tuple[int, float]]] | None = None  # each batch vector's nearest indexed points (the engine's)


def _shard_config(dim: int, exact_tail: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),  # vectors are normalised: dot = cosine
        hnsw_config=qe.HnswIndexConfig(m=_M, ef_construct=_EF_CONSTRUCT, full_scan_threshold=1),
        # index every flushed tail as its own segment; no merges, so nothing is indexed twice
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1, default_segment_number=64, max_segment_size=max(1, exact_tail * dim * 4 // 1024)),
        wal_enabled=False,  # scratch data, rebuilt from the personas on resume
    )


class DedupIndex:
    """Accepted personas' vectors in an embedded Qdrant engine, with near-duplicate checks.

    Args:
        embedder: turns persona texts into L2-normalised vectors.
        threshold: cosine similarity at or above which two personas are near-duplicates.
        qdrant: optional handle; accepted vectors are upserted into ``collection``.
        collection: the dedicated Qdrant collection.
        population: a tag stored with each point (e.g. the spec fingerprint).
        workdir: folder for the engine's temporary shard (default: the system's temp folder).
        exact_tail: how many recent acceptances are checked exactly before the engine indexes them.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        threshold: float,
        qdrant: QdrantHandle | None = None,
        collection: str = "personae_population",
        population: str = "",
        workdir: Path | None = None,
        exact_tail: int = 16384,
    ) -> None:
        if exact_tail < 1:
            raise ConfigError("bad exact tail", field="exact_tail", expected="an integer >= 1", got=exact_tail)
        self.embedder = embedder
        self.threshold = float(threshold)
        self.qdrant = qdrant
        self.collection = collection
        self.population = population
        self.dim = int(embedder.dim)
        self.exact_tail = exact_tail
        self.ids: list[str] = []
        self._tail = np.zeros((exact_tail, self.dim), dtype=np.float32)
        self._indexed = 0  # positions [0, _indexed) are in the shard, the rest in _tail
        self._nn = np.zeros(0, dtype=np.float32)
        if qdrant is not None:
            self._ensure_collection()
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="personae-dedup-", dir=workdir))
        self._shard: qe.EdgeShard | None = qe.EdgeShard.create(str(self._dir / "shard"), _shard_config(self.dim, exact_tail))
        self._cleanup = weakref.finalize(self, _remove, self._shard, self._dir)

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        """Close the engine's shard and delete its folder."""
        self._shard = None
        self._cleanup()

    def __enter__(self) -> DedupIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 embeddings of ``texts``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = normalize(np.asarray(self.embedder.embed(list(texts)), dtype=np.float32))
        if vecs.shape != (len(texts), self.dim):
            raise ValueError(f"embedder {self.embedder.name} returned shape {vecs.shape}, expected {(len(texts), self.dim)}")
        return vecs

    def _engine(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("the de-duplication index is closed")
        return self._shard

    # ---- checks -----------------------------------------------------------------------
    def _engine_best(self, batch: np.ndarray, limit: int = 1) -> list[list[tuple[int, float]]]:
        """Each vector's ``limit`` nearest indexed points as ``(position, similarity)``."""
        if not self._indexed or not len(batch):
            return [[] for _ in range(len(batch))]
        params = qe.SearchParams(hnsw_ef=max(_HNSW_EF, limit))
        out: list[list[tuple[int, float]]] = []
        rows = batch.tolist()
        for start in range(0, len(rows), _QUERY_CHUNK):
            requests = [qe.QueryRequest(limit=limit, query=qe.Query.Nearest(v), params=params) for v in rows[start : start + _QUERY_CHUNK]]
            out.extend([(int(p.id), float(p.score)) for p in hits] for hits in self._engine().query_batch(qe.QueryBatchRequest(requests)))
        return out

    def scan(self, batch: np.ndarray) -> Scan:
        """Each vector's best match among the accepted ones: the engine's, or an exact one among the recent."""
        batch = np.asarray(batch, dtype=np.float32)
        m = len(batch)
        col_max = np.full(m, -1.0, dtype=np.float32)
        col_arg = np.full(m, -1, dtype=np.int64)
        hits = self._engine_best(batch, limit=_NN_HITS)
        for j, found in enumerate(hits):
            if found:
                col_arg[j], col_max[j] = found[0]
        recent = len(self.ids) - self._indexed
        row_max = np.full(recent, -1.0, dtype=np.float32)
        for start in range(0, recent if m else 0, _ROW_CHUNK):
            block = self._tail[start : min(recent, start + _ROW_CHUNK)] @ batch.T  # rows: recent, cols: batch
            arg = block.argmax(axis=0)
            best = block[arg, np.arange(m)]
            better = best > col_max
            col_max[better] = best[better]
            col_arg[better] = arg[better] + self._indexed + start
            row_max[start : start + len(block)] = block.max(axis=1)
        return Scan(col_max, col_arg, row_max, hits)

    def is_duplicate(self, similarity: float) -> bool:
        """Whether a similarity counts as a near-duplicate."""
        return similarity >= self.threshold

    # ---- adding -------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Sequence[str], *, scan: Scan | None = None, payloads: Sequence[dict] | None = None, persist: bool = True) -> None:
        """Accept ``vectors`` (with persona ``ids``); ``scan`` must be of exactly these vectors.

        Updates every persona's nearest-neighbour similarity and, if a Qdrant handle
        was given and ``persist``, upserts the points.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) != len(ids):
            raise ValueError("vectors and ids differ in length")
        if not len(vectors):
            return
        recent = len(self.ids) - self._indexed
        if scan is None or scan.hits is None or scan.row_max is None or len(scan.col_max) != len(vectors) or len(scan.row_max) != recent:
            scan = self.scan(vectors)
        for found in scan.hits or []:  # the new vectors are neighbours of their nearest indexed points too
            for pos, similarity in found:
                self._nn[pos] = max(self._nn[pos], similarity)
        tail_nn = self._nn[self._indexed : self._indexed + recent]
        np.maximum(tail_nn, scan.row_max, out=tail_nn)
        nn_new = np.maximum(scan.col_max, _best_rows(vectors, vectors, skip_diagonal=True))
        self._nn = np.concatenate([self._nn, nn_new])
        done = 0
        while done < len(vectors):
            recent = len(self.ids) - self._indexed
            take = min(len(vectors) - done, self.exact_tail - recent)
            self._tail[recent : recent + take] = vectors[done : done + take]
            self.ids.extend(ids[done : done + take])
            done += take
            if recent + take == self.exact_tail:
                self._flush()
        if persist:
            self.persist(vectors, ids, payloads)

    def _flush(self) -> None:
        """Move the exact tail into the shard and let the engine index it."""
        recent = len(self.ids) - self._indexed
        if not recent:
            return
        engine = self._engine()
        rows = self._tail[:recent].tolist()
        for start in range(0, recent, _UPSERT_CHUNK):
            chunk = rows[start : start + _UPSERT_CHUNK]
            engine.update(qe.UpdateOperation.upsert_points([qe.Point(self._indexed + start + i, v) for i, v in enumerate(chunk)]))
        engine.optimize()
        self._indexed += recent

    def nearest_similarity(self) -> np.ndarray:
        """For each accepted persona, its highest cosine similarity to another one (-1 if alone).

        Exact among personas accepted within ``exact_tail`` of each other; otherwise an
        older persona learns of a newer neighbour when it is among the newer one's
        nearest indexed points (the engine's top hits), so a value can only fall short.
        """
        return self._nn.copy()

    def uniqueness(self) -> float | None:
        """Mean nearest-neighbour cosine distance (``1 - similarity``); ``None`` below two personas."""
        if len(self.ids) < 2:
            return None
        return float(np.mean(1.0 - self.nearest_similarity()))

    # ---- Qdrant ---------------------------------------------------------------------------
    def _ensure_collection(self) -> None:
        from qdrant_client import models

        client = self.qdrant.client
        if client.collection_exists(self.collection):
            info = client.get_collection(self.collection)
            params = info.config.params.vectors
            size = getattr(params, "size", None)
            if size is not None and size != self.dim:
                raise ConfigError(
                    f"Qdrant collection {self.collection!r} holds {size}-dimensional vectors but the embedder {self.embedder.name} gives {self.dim}",
                    field="dedup_collection",
                    expected="a collection made with the same embedder, or a new collection name",
                    got=self.collection,
                )
            return
        client.create_collection(self.collection, vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE))

    def persist(self, vectors: np.ndarray, ids: Sequence[str], payloads: Sequence[dict] | None = None) -> None:
        """Upsert ``vectors`` into the Qdrant collection (no-op without a handle)."""
        if self.qdrant is None or not len(ids):
            return
        from qdrant_client import models

        for start in range(0, len(ids), _UPSERT_CHUNK):
            chunk = slice(start, start + _UPSERT_CHUNK)
            chunk_ids = list(ids[chunk])
            extra = list(payloads[chunk]) if payloads is not None else [{}] * len(chunk_ids)
            self.qdrant.client.upsert(
                self.collection,
                points=models.Batch(
                    ids=[point_id(i) for i in chunk_ids],
                    vectors=vectors[chunk].tolist(),
                    payloads=[{"persona_id": pid, "population": self.population, **p} for pid, p in zip(chunk_ids, extra)],
                ),
                wait=True,
            )

    def load(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Rebuild the index for already-accepted personas (a resumed run).

        Vectors come from Qdrant where it has them, otherwise they are embedded (and
        upserted). Nearest-neighbour similarities are recomputed among them.
        """
        if len(ids) != len(texts):
            raise ValueError("ids and texts differ in length")
        found: dict[str, np.ndarray] = {}
        if self.qdrant is not None and ids:
            for start in range(0, len(ids), 1000):
                chunk = list(ids[start : start + 1000])
                points = self.qdrant.client.retrieve(self.collection, ids=[point_id(i) for i in chunk], with_vectors=True, with_payload=True)
                for point in points:
                    pid = (point.payload or {}).get("persona_id")
                    if pid is not None and point.vector is not None:
                        found[pid] = np.asarray(point.vector, dtype=np.float32)
        missing = [i for i, pid in enumerate(ids) if pid not in found]
        if missing:
            vecs = self.embed([texts[i] for i in missing])
            for row, i in enumerate(missing):
                found[ids[i]] = vecs[row]
            self.persist(vecs, [ids[i] for i in missing])
        log.info("dedup index: %d vectors from Qdrant, %d embedded", len(ids) - len(missing), len(missing))
        for start in range(0, len(ids), 4096):
            chunk = list(ids[start : start + 4096])
            self.add(normalize(np.stack([found[pid] for pid in chunk])), chunk, persist=False)


def _best_rows(rows: np.ndarray, cols: np.ndarray, *, skip_diagonal: bool = False) -> np.ndarray:
    """Each row's highest dot product with ``cols`` (block by block, so memory stays small)."""
    best = np.full(len(rows), -1.0, dtype=np.float32)
    for start in range(0, len(rows), _BLOCK):
        block = rows[start : start + _BLOCK] @ cols.T
        if skip_diagonal:
            idx = np.arange(len(block))
            block[idx, idx + start] = -1.0
        best[start : start + len(block)] = block.max(axis=1)
    return best


def _remove(shard: qe.EdgeShard | None, folder: Path) -> None:
    if shard is not None:
        shard.close()
    shutil.rmtree(folder, ignore_errors=True)
