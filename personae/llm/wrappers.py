"""Cross-cutting behaviour as models that wrap a model: cache, retries, endpoint limits."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from personae.errors import ModelCallError
from personae.llm.base import LLM, LLMRequest, LLMResponse, estimate_tokens
from personae.llm.cache import ResponseCache, cache_key
from personae.llm.limits import EndpointLimiter, LimitConfig, endpoint_key, reservation

__all__ = ["WrapperLLM", "CachedLLM", "RetryingLLM", "LimitedLLM"]

log = logging.getLogger(__name__)


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
        attempt = 0
        while True:
            try:
                return await self.inner.complete(request)
            except ModelCallError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                delay = min(self.max_delay_s, self.base_delay_s * (2**attempt))
                delay = delay * (0.5 + self._rng.random() / 2)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, self.max_delay_s * 3))
                attempt += 1
                self.retries += 1
                log.info("model call failed (%s); retry %d/%d in %.2fs", exc, attempt, self.max_retries, delay)
                if self.on_retry is not None:
                    self.on_retry(delay)
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
        limiter = self.limiter
        tokens = 0
        if limiter.counts_tokens:
            prompt = sum(estimate_tokens(m.content) for m in request.messages)
            tokens = reservation(prompt, request.max_tokens)
        permit = await limiter.acquire(tokens)
        try:
            response = await self.inner.complete(request)
        except ModelCallError as exc:
            await limiter.release(
                permit, ok=False, throttled=exc.status == 429, retry_after_s=exc.retry_after, tokens_used=None
            )
            raise
        except BaseException:
            await limiter.release(permit, ok=False)
            raise
        await limiter.release(permit, tokens_used=response.usage.total_tokens, rate_limit=response.rate_limit)
        return response
