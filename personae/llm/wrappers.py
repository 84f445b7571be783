"""Cross-cutting behaviour as models that wrap a model: cache, retries, endpoint limits."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from personae.errors import ModelCallError
from personae.llm.base import LLM, LLMRequest, LLMResponse, estimate_tokens
from personae.llm.cache import ResponseCache, cache_key
from personae.llm.limits import EndpointLimiter, LimitConfig, endpoint_key, reservation
from personae.llm.rate_headers import RateLimitInfo

__all__ = ["WrapperLLM", "CachedLLM", "RetryingLLM", "LimitedLLM", "retry_call", "limited_call"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class WrapperLLM:
    """Delegates everything to ``inner``; subclasses override :meth:`complete`."""

    def __init__(self, inner: LLM) -> None:
        self.inner = inner

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def model(self) -> str:
        return self.inner.model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def unwrap(self) -> LLM:
        """The innermost provider."""
        inner = self.inner
        while isinstance(inner, WrapperLLM):
            inner = inner.inner
        return inner


class CachedLLM(WrapperLLM):
    """Serves identical requests from a :class:`ResponseCache`; calls ``inner`` only on a miss.

    It stores every reply ``inner`` returns, usable or not. The :class:`~personae.llm.Gateway`
    does not use it: it caches itself, so that it stores only replies that passed their
    validation (``Gateway.complete(check=...)``).
    """

    def __init__(self, inner: LLM, cache: ResponseCache) -> None:
        super().__init__(inner)
        self.cache = cache

    async def complete(self, request: LLMRequest) -> LLMResponse:
        key = cache_key(self.provider, self.model, request)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        response = await self.inner.complete(request)
        self.cache.put(key, response)
        return response


class RetryingLLM(WrapperLLM):
    """Retries retryable failures (429, 5xx, timeouts) with jittered exponential backoff.

    A ``Retry-After`` from the server is honoured as the minimum wait; ``on_retry`` is told
    each retry's wait (the gateway counts them on the endpoint's limiter). After
    ``max_retries`` the last error is raised, so a persistent fault stops the caller.
    Above a :class:`LimitedLLM` (as in the gateway), every failed attempt has already given
    its slot back and fed its 429 to the endpoint's AIMD before the wait starts.
    """

    def __init__(
        self,
        inner: LLM,
        *,
        max_retries: int = 5,
        base_delay_s: float = 0.25,
        max_delay_s: float = 20.0,
        rng: random.Random | None = None,
        on_retry: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__(inner)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._rng = rng or random.Random()
        self.on_retry = on_retry
        self.retries = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await retry_call(
            lambda: self.inner.complete(request), max_retries=self.max_retries, base_delay_s=self.base_delay_s,
            max_delay_s=self.max_delay_s, rng=self._rng, on_retry=self._count_retry,
        )

    def _count_retry(self, delay: float) -> None:
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(delay)


async def retry_call(
    call: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    base_delay_s: float,
    max_delay_s: float = 20.0,
    rng: random.Random | None = None,
    on_retry: Callable[[float], None] | None = None,
) -> T:
    """``call()``, retried on a retryable :class:`ModelCallError` (429, 5xx, timeouts) with jittered
    exponential backoff, a ``Retry-After`` as the minimum wait; the last error after ``max_retries``.
    ``on_retry`` is told each retry's wait. The retry policy of every model call (chat and embeddings)."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        try:
            return await call()
        except ModelCallError as exc:
            if not exc.retryable or attempt >= max_retries:
                raise
            delay = min(max_delay_s, base_delay_s * (2**attempt))
            delay = delay * (0.5 + rng.random() / 2)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, max_delay_s * 3))
            attempt += 1
            log.info("model call failed (%s); retry %d/%d in %.2fs", exc, attempt, max_retries, delay)
            if on_retry is not None:
                on_retry(delay)
            await asyncio.sleep(delay)


class LimitedLLM(WrapperLLM):
    """Admits each call through an endpoint's :class:`~personae.llm.limits.EndpointLimiter`.

    The limiter holds the endpoint's budget (calls in flight, requests and tokens per
    minute) for every model, event loop and thread that shares it, and learns from each
    call: successes widen the window of calls in flight, a 429 narrows it and pauses the
    endpoint for its ``Retry-After``, the provider's ``x-ratelimit-*`` headers tighten the
    buckets, and the real token count corrects the reservation. Under a
    :class:`RetryingLLM` a call holds its slot only while it is on the wire, not while it
    sleeps before a retry.

    ``limiter`` may be a plain ``int``: a limit of that many calls in flight for this
    wrapper alone (no rates, no adaptation).
    """

    def __init__(self, inner: LLM, limiter: EndpointLimiter | int) -> None:
        super().__init__(inner)
        if isinstance(limiter, int):
            if limiter < 1:
                raise ValueError(f"limit must be >= 1, got {limiter}")
            limiter = EndpointLimiter(endpoint_key(inner), LimitConfig(max_concurrency=limiter, adaptive=False, latency_spike_factor=None))
        self.limiter = limiter

    @property
    def limit(self) -> int:
        """Calls allowed in flight now on this endpoint."""
        return self.limiter.limit

    @property
    def in_flight(self) -> int:
        return self.limiter.in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most calls in flight at once on this endpoint (every model sharing its limiter)."""
        return self.limiter.peak_in_flight

    async def complete(self, request: LLMRequest) -> LLMResponse:
        tokens = 0
        if self.limiter.counts_tokens:
            prompt = sum(estimate_tokens(m.content) for m in request.messages)
            tokens = reservation(prompt, request.max_tokens)
        return await limited_call(
            self.limiter, tokens, lambda: self.inner.complete(request),
            settle=lambda response: (response.usage.total_tokens, response.rate_limit),
        )


async def limited_call(
    limiter: EndpointLimiter,
    tokens: int,
    call: Callable[[], Awaitable[T]],
    *,
    settle: Callable[[T], tuple[int | None, RateLimitInfo | None]],
    latency: bool = True,
) -> T:
    """``call()`` admitted by ``limiter`` with ``tokens`` reserved, its permit given back after it:
    a 429 (with its ``Retry-After``) narrows the window and pauses the endpoint, a success tells
    the limiter what ``settle`` reads from the reply (tokens used, rate-limit headers) and, if
    ``latency``, how long it took (for the latency spikes of :class:`EndpointLimiter`)."""
    permit = await limiter.acquire(tokens)
    try:
        reply = await call()
    except ModelCallError as exc:
        await limiter.release(permit, ok=False, throttled=exc.status == 429, retry_after_s=exc.retry_after, tokens_used=None)
        raise
    except BaseException:
        await limiter.release(permit, ok=False)
        raise
    used, rate_limit = settle(reply)
    await limiter.release(permit, tokens_used=used, rate_limit=rate_limit, latency=latency)
    return reply
