"""Embeddings requests through the gateway: the endpoint's limits, the retry policy, usage and budget.

An embedder that reaches a remote endpoint sends each HTTP request through an
:class:`EmbeddingGate` (from :meth:`~personae.llm.Gateway.embedding_gate`). The request then
takes a slot of the endpoint's shared :class:`~personae.llm.limits.EndpointLimiter` (the same
one as the chat calls to that URL and key), reserves one request and its estimated tokens
(≈ 4 characters per token) in the RPM/TPM buckets, settled with the tokens the endpoint reports;
a 429 narrows the window and pauses the endpoint for its ``Retry-After``; retryable failures are
retried by the gateway's policy (:func:`~personae.llm.wrappers.retry_call`). Each request that
reached the endpoint is counted in the gateway's usage under the role
:data:`~personae.llm.gateway.EMBEDDINGS_ROLE` and charged to the run's budget meter, if any:
its tokens and their cost at the ``embeddings`` price, not as a model call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from personae.costs import BudgetMeter
from personae.llm.base import estimate_tokens
from personae.llm.gateway import EMBEDDINGS_ROLE, UsageTracker
from personae.llm.limits import EndpointLimiter, LimitConfig, Limits
from personae.llm.rate_headers import RateLimitInfo
from personae.llm.wrappers import limited_call, retry_call

__all__ = ["EmbeddingGate", "EmbeddingGates", "EmbeddingReply"]

T = TypeVar("T")


@dataclass(frozen=True)
class EmbeddingReply(Generic[T]):
    """One answered embeddings request: the embedder's own ``value`` (e.g. the parsed body), the
    tokens the endpoint reported (``None``: it reported none) and its rate-limit headers."""

    value: T
    prompt_tokens: int | None = None
    rate_limit: RateLimitInfo | None = None


class EmbeddingGate:
    """Sends an embedder's requests to one endpoint through its limiter, with retries,
    accounted in ``usage`` and charged to ``meter`` (see the module docs)."""

    def __init__(
        self,
        limiter: EndpointLimiter,
        usage: UsageTracker,
        *,
        meter: BudgetMeter | None = None,
        max_retries: int = 5,
        retry_base_delay_s: float = 0.25,
    ) -> None:
        self.limiter = limiter
        self.usage = usage
        self.meter = meter
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s

    @property
    def endpoint(self) -> str:
        """The endpoint key whose limits the requests share."""
        return self.limiter.key

    async def call(self, send: Callable[[], Awaitable[EmbeddingReply[T]]], texts: Sequence[str]) -> T:
        """``send()`` (one HTTP request embedding ``texts``, raising
        :class:`~personae.errors.ModelCallError` on failure) through the limits and retries; its value.

        Raises :class:`~personae.errors.BudgetExceeded` before sending once the meter's budget is spent.
        """
        estimate = sum(estimate_tokens(t) for t in texts)

        took = 0.0

        async def timed() -> EmbeddingReply[T]:
            nonlocal took
            started = time.perf_counter()
            try:
                return await send()
            finally:
                took = time.perf_counter() - started

        async def attempt() -> EmbeddingReply[T]:
            if self.meter is not None:
                self.meter.check()
            reply = await limited_call(
                self.limiter, estimate if self.limiter.counts_tokens else 0, timed,
                settle=lambda r: (r.prompt_tokens if r.prompt_tokens is not None else estimate, r.rate_limit),
                latency=False,
            )
            tokens = reply.prompt_tokens if reply.prompt_tokens is not None else estimate
            self.usage.record_embedding(inputs=len(texts), prompt_tokens=tokens, latency_s=took)
            if self.meter is not None:
                self.meter.charge(EMBEDDINGS_ROLE, tokens, 0, calls=0)
            return reply

        try:
            reply = await retry_call(attempt, max_retries=self.max_retries, base_delay_s=self.retry_base_delay_s,
                                     on_retry=self.limiter.record_retry)
        except Exception:
            self.usage.record_failure(EMBEDDINGS_ROLE)
            raise
        return reply.value

    def call_blocking(self, send: Callable[[], EmbeddingReply[T]], texts: Sequence[str]) -> T:
        """:meth:`call` for sync code: ``send`` (blocking) runs in a worker thread, the limits on an
        event loop of their own in another, so it works inside a running event loop as well."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="personae-embed") as pool:
            return pool.submit(asyncio.run, self.call(lambda: asyncio.to_thread(send), texts)).result()


@dataclass
class EmbeddingGates:
    """Where embedders' requests go when no gateway is at hand (e.g. a memory shared by the
    shards of a flow): the endpoint limits to share, the usage to count them in, the retry
    policy, and the limits of an endpoint no call has reached yet (``configs`` per endpoint
    key, else ``default``). :meth:`~personae.llm.Gateway.embedding_gate` is the same with the
    gateway's own."""

    limits: Limits
    usage: UsageTracker
    default: LimitConfig = field(default_factory=LimitConfig)
    configs: Mapping[str, LimitConfig] = field(default_factory=dict)
    max_retries: int = 5
    retry_base_delay_s: float = 0.25

    def embedding_gate(self, endpoint: str, *, meter: BudgetMeter | None = None, default: LimitConfig | None = None) -> EmbeddingGate:
        """The gate of ``endpoint``'s requests: its limiter as it is, if the endpoint has one, else a
        new one with its ``configs`` entry, else ``default`` (else :attr:`default`)."""
        config = self.configs.get(endpoint, default or self.default).model_copy(update={"latency_spike_factor": None})
        limiter = self.limits.joined(endpoint, config)
        return EmbeddingGate(limiter, self.usage, meter=meter, max_retries=self.max_retries, retry_base_delay_s=self.retry_base_delay_s)
