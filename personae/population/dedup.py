"""Semantic de-duplication of personas: an in-memory index for checks, Qdrant to persist.

Each persona is embedded (injected :class:`~personae.embeddings.Embedder`) from
:func:`persona_text`. A candidate whose cosine similarity to any accepted persona
is at or above the threshold is a near-duplicate. Checks are exact (brute force,
batched float32 matrix products in row chunks), which is fast at population scale;
Qdrant (a dedicated collection) is the persistent store that a resumed run reloads
vectors from, and that other parts can search.

The index also keeps, for every accepted persona, its highest similarity to any
other one, which gives the population's uniqueness (mean nearest-neighbour distance).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from personae.embeddings.base import Embedder, normalize
from personae.errors import ConfigError
from personae.ids import content_hash
from personae.memory.qdrant import QdrantHandle
from personae.models import Persona
from personae.population.mapping import META_KEY, format_value

__all__ = ["DedupIndex", "Scan", "persona_text", "point_id"]

log = logging.getLogger(__name__)
_ROW_CHUNK = 8192
_UPSERT_CHUNK = 512


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

    col_max: np.ndarray  # best similarity of each batch vector to the index
    col_arg: np.ndarray  # position in the index of that best match (-1 if empty)
    row_max: np.ndarray  # best similarity of each indexed vector to the batch


class DedupIndex:
    """Vectors of accepted personas with exact near-duplicate checks.

    Args:
        embedder: turns persona texts into L2-normalised vectors.
        threshold: cosine similarity at or above which two personas are near-duplicates.
        qdrant: optional handle; accepted vectors are upserted into ``collection``.
        collection: the dedicated Qdrant collection.
        population: a tag stored with each point (e.g. the spec fingerprint).
    """

    def __init__(self, embedder: Embedder, *, threshold: float, qdrant: QdrantHandle | None = None, collection: str = "personae_population", population: str = "") -> None:
        self.embedder = embedder
        self.threshold = float(threshold)
        self.qdrant = qdrant
        self.collection = collection
        self.population = population
        self.dim = int(embedder.dim)
        self._vecs = np.zeros((0, self.dim), dtype=np.float32)
        self._nn = np.zeros(0, dtype=np.float32)
        self._n = 0
        self.ids: list[str] = []
        if qdrant is not None:
            self._ensure_collection()

    def __len__(self) -> int:
        return self._n

    @property
    def vectors(self) -> np.ndarray:
        """The accepted vectors (a view)."""
        return self._vecs[: self._n]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 embeddings of ``texts``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = normalize(np.asarray(self.embedder.embed(list(texts)), dtype=np.float32))
        if vecs.shape != (len(texts), self.dim):
            raise ValueError(f"embedder {self.embedder.name} returned shape {vecs.shape}, expected {(len(texts), self.dim)}")
        return vecs

    # ---- checks -----------------------------------------------------------------------
    def scan(self, batch: np.ndarray) -> Scan:
        """Similarities between ``batch`` and every accepted vector (chunked, exact)."""
        batch = np.asarray(batch, dtype=np.float32)
        m = len(batch)
        col_max = np.full(m, -1.0, dtype=np.float32)
        col_arg = np.full(m, -1, dtype=np.int64)
        row_max = np.full(self._n, -1.0, dtype=np.float32)
        for start in range(0, self._n, _ROW_CHUNK):
            block = self._vecs[start : min(self._n, start + _ROW_CHUNK)] @ batch.T  # rows: indexed, cols: batch
            if m == 0:
                continue
            arg = block.argmax(axis=0)
            best = block[arg, np.arange(m)]
            better = best > col_max
            col_max[better] = best[better]
            col_arg[better] = arg[better] + start
            row_max[start : start + len(block)] = block.max(axis=1)
        return Scan(col_max, col_arg, row_max)

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
        if scan is None or len(scan.col_max) != len(vectors) or len(scan.row_max) != self._n:
            scan = self.scan(vectors)
        old = self._n
        if old:
            np.maximum(self._nn[:old], scan.row_max, out=self._nn[:old])
        inner = vectors @ vectors.T
        np.fill_diagonal(inner, -1.0)
        nn_new = np.maximum(scan.col_max, inner.max(axis=1) if len(vectors) > 1 else -1.0)
        self._grow(old + len(vectors))
        self._vecs[old : old + len(vectors)] = vectors
        self._nn[old : old + len(vectors)] = nn_new
        self._n = old + len(vectors)
        self.ids.extend(ids)
        if persist:
            self.persist(vectors, ids, payloads)

    def _grow(self, need: int) -> None:
        if need <= len(self._vecs):
            return
        cap = max(need, 2 * len(self._vecs), 1024)
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[: self._n] = self._vecs[: self._n]
        nn = np.full(cap, -1.0, dtype=np.float32)
        nn[: self._n] = self._nn[: self._n]
        self._vecs, self._nn = vecs, nn

    def nearest_similarity(self) -> np.ndarray:
        """For each accepted persona, its highest cosine similarity to another one (-1 if alone)."""
        return self._nn[: self._n].copy()

    def uniqueness(self) -> float | None:
        """Mean nearest-neighbour cosine distance (``1 - similarity``); ``None`` below two personas."""
        if self._n < 2:
            return None
        return float(np.mean(1.0 - self._nn[: self._n]))

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
            batch = normalize(np.stack([found[pid] for pid in chunk])) if chunk else np.zeros((0, self.dim), np.float32)
            self.add(batch, chunk, persist=False)
