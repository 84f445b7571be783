"""Cross-cutting behaviour as models that wrap a model: cache, retries, concurrency limit."""

from __future__ import annotations

import asyncio
import logging
import random
import weakref

from personae.errors import ModelCallError
from personae.llm.base import LLM, LLMRequest, LLMResponse
from personae.llm.cache import ResponseCache, cache_key

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

    A ``Retry-After`` from the server is honoured as the minimum wait. After
    ``max_retries`` the last error is raised, so a persistent fault stops the caller.
    """

    def __init__(
        self,
        inner: LLM,
        *,
        max_retries: int = 5,
        base_delay_s: float = 0.25,
        max_delay_s: float = 20.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner)
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._rng = rng or random.Random()
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
                await asyncio.sleep(delay)


class LimitedLLM(WrapperLLM):
    """Caps concurrent calls at ``limit`` across every caller sharing this wrapper.

    One semaphore per event loop, so a gateway reused by successive ``asyncio.run``
    calls (e.g. Prefect tasks) never touches a semaphore bound to a dead loop.
    """

    def __init__(self, inner: LLM, limit: int) -> None:
        super().__init__(inner)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
        self.in_flight = 0
        self.peak_in_flight = 0

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = self._semaphores[loop] = asyncio.Semaphore(self.limit)
        return sem

    async def complete(self, request: LLMRequest) -> LLMResponse:
        async with self._semaphore():
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                return await self.inner.complete(request)
            finally:
                self.in_flight -= 1
