"""Any LangChain embeddings model (``langchain_core`` ``Embeddings``) as a personae embedder.

Texts go through ``embed_documents`` / ``aembed_documents``; the vectors are checked
(one per text, one dimension) and L2-normalised. Provider errors become
:class:`~personae.errors.ModelCallError`. With a gate (``build_embedder`` with a gateway),
calls go through the gateway's limits and retries (the model may retry on its own as well).

Note that ``langchain_openai.OpenAIEmbeddings`` tokenises with tiktoken by default,
which downloads its encodings: give it ``check_embedding_ctx_length=False``, or use
personae's own :class:`~personae.embeddings.openai.OpenAIEmbedder` for
OpenAI-compatible endpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from personae._langchain import api_key_of, base_url_of, build_from_path, call_error, model_name_of
from personae.embeddings.base import normalize
from personae.errors import ConfigError, ModelOutputError
from personae.llm.embedding_gate import EmbeddingGate, EmbeddingReply
from personae.llm.limits import endpoint_identity, key_fingerprint

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

__all__ = ["LangChainEmbedder", "load_embeddings", "endpoint_of"]

_PROBE_TEXT = "dimension probe"


class LangChainEmbedder:
    """A LangChain ``Embeddings`` behind the :class:`~personae.embeddings.base.Embedder` protocol.

    Args:
        embeddings: any ``langchain_core`` ``Embeddings``.
        name: the model part of :attr:`name` (``langchain:<name>``); defaults to the
            model's ``model``/``model_name``, else its class name.
        dim: the vector dimension if known; otherwise learned from the first reply
            (reading :attr:`dim` before any call embeds one probe text).
        gate: the gateway's way to the model's endpoint (:meth:`~personae.llm.Gateway.embedding_gate`,
            see :func:`endpoint_of`): its limits, retries, usage (tokens estimated, as LangChain
            reports none) and budget. Without one, calls go straight to the model.
    """

    def __init__(self, embeddings: Embeddings, *, name: str | None = None, dim: int | None = None, gate: EmbeddingGate | None = None) -> None:
        from langchain_core.embeddings import Embeddings

        if not isinstance(embeddings, Embeddings):
            raise ConfigError("LangChainEmbedder wraps a LangChain embeddings model", field="embeddings", expected="a langchain_core Embeddings", got=type(embeddings).__name__)
        self.embeddings = embeddings
        self._model = name or model_name_of(embeddings) or type(embeddings).__name__
        self._dim = dim
        self.gate = gate

    @property
    def name(self) -> str:
        return f"langchain:{self._model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed([_PROBE_TEXT])  # _rows records the dimension
        if self._dim is None:
            raise ModelOutputError("the embeddings model returned no vector for the dimension probe", model=self._model)
        return self._dim

    def __repr__(self) -> str:  # the embeddings' repr could show a key
        return f"LangChainEmbedder(model={self._model!r}, embeddings={type(self.embeddings).__name__})"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of shape ``(len(texts), dim)``, float32, L2-normalised."""
        items = _texts(texts)
        if not items:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        if self.gate is not None:
            return self._rows(self.gate.call_blocking(lambda: self._answer(items), items), len(items))
        return self._rows(self._answer(items).value, len(items))

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` through ``aembed_documents`` (LangChain runs a sync-only model in a thread)."""
        items = _texts(texts)
        if not items:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        if self.gate is not None:
            return self._rows(await self.gate.call(lambda: self._aanswer(items), items), len(items))
        return self._rows((await self._aanswer(items)).value, len(items))

    def _answer(self, items: list[str]) -> EmbeddingReply[Any]:
        try:
            return EmbeddingReply(self.embeddings.embed_documents(items))  # no usage reported: tokens estimated
        except Exception as exc:  # any integration's error, mapped by its status or kind
            raise call_error(exc, model=self._model, what="embeddings call") from None

    async def _aanswer(self, items: list[str]) -> EmbeddingReply[Any]:
        try:
            return EmbeddingReply(await self.embeddings.aembed_documents(items))
        except Exception as exc:
            raise call_error(exc, model=self._model, what="embeddings call") from None

    def _rows(self, vectors: Any, expected: int) -> np.ndarray:
        try:
            rows = np.asarray(vectors, dtype=np.float32)
        except (ValueError, TypeError) as exc:  # ragged or non-numeric
            raise ModelOutputError(f"the embeddings model returned vectors that are not one float array: {exc}", model=self._model) from None
        if rows.ndim != 2 or rows.shape[0] != expected:
            raise ModelOutputError(f"the embeddings model returned shape {rows.shape} for {expected} texts", model=self._model)
        if self._dim is None:
            self._dim = int(rows.shape[1])
        elif rows.shape[1] != self._dim:
            raise ModelOutputError(f"the embeddings model returned {rows.shape[1]}-dim vectors, expected {self._dim}", model=self._model)
        return normalize(rows)


def load_embeddings(path: str, kwargs: Mapping[str, Any] | None = None, *, field_prefix: str | None = None, secrets: tuple[str, ...] = ()) -> Embeddings:
    """The embeddings model the class (or factory) at import ``path`` makes from ``kwargs``.

    Raises :class:`ConfigError` naming ``<field_prefix>.class`` or ``<field_prefix>.kwargs``.
    """
    from langchain_core.embeddings import Embeddings

    return build_from_path(path, kwargs, base=Embeddings, what="LangChain embeddings model (Embeddings)", prefix=field_prefix, secrets=secrets)


def endpoint_of(embeddings: Embeddings) -> str:
    """The endpoint key of a LangChain embeddings model: its URL and key fingerprint (as for a
    LangChain chat model on it), or ``langchain`` when it names no URL."""
    url = base_url_of(embeddings)
    return endpoint_identity(url, key_fingerprint(api_key_of(embeddings))) if url else "langchain"


def _texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string")
    return list(texts)
