"""Semantic de-duplication of personas: near-duplicate checks in the embedded Qdrant engine.

Each persona is embedded (injected :class:`~personae.embeddings.Embedder`) from
:func:`persona_text`. A candidate whose cosine similarity to any accepted persona
is at or above the threshold is a near-duplicate.

Accepted vectors go to a Qdrant Edge shard in a temporary folder (under
``workdir`` when given, e.g. the run's output folder; removed by :meth:`DedupIndex.close`),
with their locality-sensitive hash buckets as a sparse vector: the engine finds each
candidate's accepted points that share buckets with it in its inverted index and
scores them exactly (see :class:`DedupIndex`). Checks go in batched queries; a batch's
own near-duplicates are found with a matrix product, first accepted wins. Memory
stays bounded: the process holds the ids and a fixed sample, the shard the vectors.

Qdrant (an optional handle, a dedicated collection) is the persistent store that a
resumed run reloads vectors from, and that other parts can search. The index also
gives, for a sample of accepted personas, the exact highest similarity to any other
one, which gives the population's uniqueness (mean nearest-neighbour distance).
"""

from __future__ import annotations

import logging
import math
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

__all__ = ["DedupIndex", "Scan", "best_earlier", "lsh_shape", "lsh_tables", "persona_text", "point_id"]

log = logging.getLogger(__name__)
_UPSERT_CHUNK = 512
_QUERY_CHUNK = 1024
_BLOCK = 1024
_DENSE, _LSH = "dense", "lsh"
_LSH_BITS = (20, 16)  # bits per hash table, most first: fewer random pairs share a bucket (24 cost as much CPU, with more tables)
_LSH_TABLES = 64  # ... unless that needs more tables than this (each table is a posting per vector in the engine's memory)
_LSH_RECALL = 0.99  # chance that a pair exactly at the threshold shares a bucket in some table (closer pairs: more)
_LSH_MAX_TABLES = 128
_CANDIDATES = 8  # points sharing the most buckets with a query, which the engine then scores exactly
_LSH_SEED = 0x17D
_NN_SAMPLE = 1024


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

    col_max: np.ndarray  # best similarity of each batch vector to the index (-1 if none found)
    col_arg: np.ndarray  # position in the index of that best match (-1 if none found)


def lsh_shape(threshold: float) -> tuple[int, int]:
    """Bits per table and number of tables for ``threshold``: the most bits that need at most 64 tables."""
    for bits in _LSH_BITS:
        tables = lsh_tables(threshold, bits)
        if tables <= _LSH_TABLES:
            return bits, tables
    return _LSH_BITS[-1], lsh_tables(threshold, _LSH_BITS[-1])


def lsh_tables(threshold: float, bits: int, recall: float = _LSH_RECALL) -> int:
    """How many sign-random-projection tables of ``bits`` bits make a pair at ``threshold`` collide with ``recall``.

    A pair at cosine ``s`` agrees on one random hyperplane with probability
    ``1 - arccos(s) / pi``, so on a whole table with that to the power ``bits``.
    """
    agree = (1.0 - math.acos(min(1.0, max(-1.0, threshold))) / math.pi) ** bits
    if agree >= 1.0:
        return 1
    return int(min(_LSH_MAX_TABLES, max(1, math.ceil(math.log(1.0 - recall) / math.log(1.0 - agree)))))


def _shard_config(dim: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors={_DENSE: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot)},  # vectors are normalised: dot = cosine
        sparse_vectors={_LSH: qe.EdgeSparseVectorParams()},  # one dimension per (table, bucket): an inverted index
        # the dense vectors only rescore candidates, so no HNSW graph is built (that cost more than the whole check)
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=2**30, default_segment_number=1),
        max_search_threads=1,  # one query at a time is faster than a pool on a busy machine (bench/dedup.py)
        wal_enabled=False,  # scratch data, rebuilt from the personas on resume
    )


class DedupIndex:
    """Accepted personas' vectors in an embedded Qdrant engine, with near-duplicate checks.

    Each accepted vector is stored in a Qdrant Edge shard twice: as a dense vector, and
    as a sparse vector of its locality-sensitive hash buckets (``lsh_shape(threshold)``:
    tables of 16 or 20 random-hyperplane sign bits; one sparse dimension per table and
    bucket). A check is one engine query per candidate: the engine's inverted index
    finds the accepted points that share the most buckets with it (a prefetch), and
    scores those exactly by cosine. Pairs at or above the threshold share a bucket with
    probability >= 99 % (closer pairs: more), random pairs almost never, so the answer
    agrees with an exact check on near-duplicates without a graph to build.

    The process holds the ids and ``nn_sample`` vectors; the shard holds the rest.
    For the uniqueness metric, the first ``nn_sample`` accepted personas keep their exact
    nearest-neighbour similarity over the whole population (every later batch is compared
    with them); see :meth:`nearest_similarity`.

    Args:
        embedder: turns persona texts into L2-normalised vectors.
        threshold: cosine similarity at or above which two personas are near-duplicates.
        qdrant: optional handle; accepted vectors are upserted into ``collection``.
        collection: the dedicated Qdrant collection.
        population: a tag stored with each point (e.g. the spec fingerprint).
        workdir: folder for the engine's temporary shard (default: the system's temp folder).
        nn_sample: how many personas (the first accepted) get an exact nearest-neighbour similarity.
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
        nn_sample: int = _NN_SAMPLE,
    ) -> None:
        if nn_sample < 2:
            raise ConfigError("bad nearest-neighbour sample", field="nn_sample", expected="an integer >= 2", got=nn_sample)
        self.embedder = embedder
        self.threshold = float(threshold)
        self.qdrant = qdrant
        self.collection = collection
        self.population = population
        self.dim = int(embedder.dim)
        self.ids: list[str] = []
        self.bits, self.tables = lsh_shape(self.threshold)
        rng = np.random.default_rng(_LSH_SEED)
        self._planes = rng.standard_normal((self.dim, self.tables * self.bits)).astype(np.float32)
        self._ones = [1.0] * self.tables
        self._offsets = np.arange(self.tables, dtype=np.int64) << self.bits
        self._sample = np.zeros((nn_sample, self.dim), dtype=np.float32)
        self._sample_nn = np.full(nn_sample, -1.0, dtype=np.float32)
        if qdrant is not None:
            self._ensure_collection()
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix="personae-dedup-", dir=workdir))
        self._shard: qe.EdgeShard | None = qe.EdgeShard.create(str(self._dir / "shard"), _shard_config(self.dim))
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

    def buckets(self, vectors: np.ndarray) -> list[list[int]]:
        """Each vector's hash bucket in every table, as sparse dimensions (table * 2**bits + bucket)."""
        signs = (np.asarray(vectors, dtype=np.float32) @ self._planes > 0).reshape(len(vectors), self.tables, self.bits)
        packed = np.packbits(signs, axis=-1, bitorder="little").astype(np.int64)  # (n, tables, bytes)
        keys = (packed << (8 * np.arange(packed.shape[-1], dtype=np.int64))).sum(axis=-1)
        return (keys + self._offsets).tolist()

    # ---- checks -----------------------------------------------------------------------
    def scan(self, batch: np.ndarray) -> Scan:
        """Each vector's best match among the accepted ones, found and scored by the engine."""
        batch = np.asarray(batch, dtype=np.float32)
        m = len(batch)
        col_max = np.full(m, -1.0, dtype=np.float32)
        col_arg = np.full(m, -1, dtype=np.int64)
        if not self.ids or not m:
            return Scan(col_max, col_arg)
        engine, ones = self._engine(), self._ones
        rows, keys = batch.tolist(), self.buckets(batch)
        for start in range(0, m, _QUERY_CHUNK):
            requests = [
                qe.QueryRequest(
                    limit=1,
                    query=qe.Query.Nearest(row, using=_DENSE),
                    prefetches=[qe.Prefetch(limit=_CANDIDATES, query=qe.Query.Nearest(qe.SparseVector(key, ones), using=_LSH))],
                )
                for row, key in zip(rows[start : start + _QUERY_CHUNK], keys[start : start + _QUERY_CHUNK])
            ]
            for j, hits in enumerate(engine.query_batch(qe.QueryBatchRequest(requests)), start):
                if hits:
                    col_arg[j], col_max[j] = int(hits[0].id), float(hits[0].score)
        return Scan(col_max, col_arg)

    def is_duplicate(self, similarity: float) -> bool:
        """Whether a similarity counts as a near-duplicate."""
        return similarity >= self.threshold

    def check(self, vectors: np.ndarray) -> tuple[np.ndarray, Scan]:
        """Which of ``vectors`` are not near-duplicates, first accepted wins (nothing is added).

        A vector is rejected if it is a near-duplicate of an accepted persona (the
        engine's answer) or of an earlier vector of the batch that is itself kept
        (exact, one matrix product per block of the batch).
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        scan = self.scan(vectors)
        keep = scan.col_max < self.threshold
        pairs: dict[int, list[int]] = {}
        for start in range(0, len(vectors), _BLOCK):
            block = vectors[start : start + _BLOCK] @ vectors[: start + _BLOCK].T  # rows: this block, cols: up to its end
            rows, cols = np.nonzero(np.tril(block >= self.threshold, k=start - 1))  # only earlier vectors
            for r, c in zip((rows + start).tolist(), cols.tolist()):
                pairs.setdefault(r, []).append(c)
        for later in sorted(pairs):
            if keep[later] and any(keep[earlier] for earlier in pairs[later]):
                keep[later] = False
        return keep, scan

    # ---- adding -------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Sequence[str], *, payloads: Sequence[dict] | None = None, persist: bool = True) -> None:
        """Accept ``vectors`` (with persona ``ids``): into the engine, and Qdrant if a handle was given and ``persist``."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) != len(ids):
            raise ValueError("vectors and ids differ in length")
        if not len(vectors):
            return
        self._track_sample(vectors)
        engine, ones, first = self._engine(), self._ones, len(self.ids)
        rows, keys = vectors.tolist(), self.buckets(vectors)
        for start in range(0, len(rows), _UPSERT_CHUNK):
            engine.update(qe.UpdateOperation.upsert_points([
                qe.Point(first + i, {_DENSE: row, _LSH: qe.SparseVector(key, ones)})
                for i, (row, key) in enumerate(zip(rows[start : start + _UPSERT_CHUNK], keys[start : start + _UPSERT_CHUNK]), start)
            ]))
        self.ids.extend(ids)
        if persist:
            self.persist(vectors, ids, payloads)

    def _track_sample(self, vectors: np.ndarray) -> None:
        """Update the sampled personas' exact nearest-neighbour similarity with ``vectors`` (about to be accepted)."""
        size = len(self._sample)
        held = min(len(self.ids), size)
        joining = min(size - held, len(vectors))
        self._sample[held : held + joining] = vectors[:joining]
        sample = self._sample[: held + joining]
        for start in range(0, len(vectors), _BLOCK):
            block = vectors[start : start + _BLOCK] @ sample.T  # rows: new vectors, cols: sample
            own = np.arange(start, min(start + _BLOCK, joining))
            block[own - start, held + own] = -1.0  # a joining vector is not its own neighbour
            np.maximum(self._sample_nn[: held + joining], block.max(axis=0), out=self._sample_nn[: held + joining])
            if start < joining:  # a joining vector's neighbours among earlier accepted ones are all in the sample
                inside = min(len(block), joining - start)
                np.maximum(self._sample_nn[held + start : held + start + inside], block[:inside].max(axis=1), out=self._sample_nn[held + start : held + start + inside])

    def nearest_similarity(self) -> np.ndarray:
        """Highest cosine similarity of each sampled persona to any other accepted one (-1 if alone).

        The sample is the first ``nn_sample`` accepted personas (all of them below that),
        and each value is exact over the whole population: the new vectors of every
        batch are compared with the sample. Its mean estimates the population's mean.
        """
        return self._sample_nn[: min(len(self.ids), len(self._sample))].copy()

    def uniqueness(self) -> float | None:
        """Mean nearest-neighbour cosine distance (``1 - similarity``) over the sample; ``None`` below two personas."""
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


def best_earlier(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's highest dot product with an earlier vector of ``vectors``, and that one's position (-1, -1 for the first)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    best = np.full(len(vectors), -1.0, dtype=np.float32)
    arg = np.full(len(vectors), -1, dtype=np.int64)
    for start in range(0, len(vectors), _BLOCK):
        block = vectors[start : start + _BLOCK] @ vectors[: start + _BLOCK].T  # rows: this block, cols: up to its end
        block[np.triu_indices(len(block), k=start, m=block.shape[1])] = -np.inf  # only earlier vectors
        arg[start : start + len(block)] = block.argmax(axis=1)
        best[start : start + len(block)] = block.max(axis=1)
    first = np.isneginf(best)
    best[first], arg[first] = -1.0, -1
    return best, arg


def _remove(shard: qe.EdgeShard | None, folder: Path) -> None:
    if shard is not None:
        shard.close()
    shutil.rmtree(folder, ignore_errors=True)
