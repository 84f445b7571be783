"""One limiter per endpoint: calls in flight, requests per minute and tokens per minute.

An *endpoint* is where the calls go and whose quota they share: the base URL of an
HTTP endpoint (``https://api.openai.com/v1`` when none is set) and the API key's
fingerprint (providers limit per key: two keys on one URL are two endpoints; the key
itself is never held here), else the provider's identity (``fake``, ``local``). Every model, event loop, thread and gateway of a
process that reaches one endpoint through the same :class:`Limits` registry shares
one :class:`EndpointLimiter`:

* **calls in flight**, at most ``max_concurrency``, adapted by AIMD: the window grows
  by one per window of successful calls and is multiplied by ``decrease_factor`` on a
  429 or a latency spike (once per round of calls: a burst of 429s from calls started
  together counts once); never below 1, never above ``max_concurrency``;
* **requests per minute** and **tokens per minute**, as token buckets holding
  ``burst_s`` seconds of their rate. A call reserves its estimated tokens (prompt +
  ``max_tokens``) and the reservation is corrected with the reported usage after it;
* the provider's rate-limit headers (OpenAI's ``x-ratelimit-*``, Anthropic's, the IETF
  draft's: :mod:`personae.llm.rate_headers`) tighten the buckets (a lower limit than
  the configured one is adopted, as a rate over the window the headers show, else per
  minute; the remaining count caps the bucket) and a
  ``Retry-After`` pauses every caller of the endpoint.

The limiter is thread-safe and loop-agnostic: its state sits behind a
:class:`threading.Lock`, and a caller waiting for a slot waits on a future of its own
event loop, resolved thread-safely by whoever frees the slot.

Limits shared beyond one process (Prefect's global concurrency and rate limits, for
shards on Dask workers) plug in as a :class:`SharedLimiter`; they are wired in from
``personae.flows``, since nothing below it imports Prefect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from personae.llm.rate_headers import RateLimitInfo, parse_duration, parse_rate_limit_headers, per_minute

__all__ = [
    "LimitConfig",
    "LimiterStats",
    "merge_limiter_stats",
    "endpoint_label",
    "RateLimitInfo",
    "EndpointLimiter",
    "Limits",
    "SharedLimiter",
    "Permit",
    "parse_rate_limit_headers",
    "parse_duration",
    "DEFAULT_COMPLETION_RESERVE",
    "endpoint_key",
    "endpoint_identity",
    "endpoint_url",
    "key_fingerprint",
    "reservation",
]

log = logging.getLogger(__name__)

DEFAULT_COMPLETION_RESERVE = 256
"""Completion tokens reserved for a request without ``max_tokens``, for the tokens-per-minute bucket."""

_MAX_PAUSE_S = 60.0


class LimitConfig(BaseModel):
    """The limits of one endpoint. Two models on one endpoint share the tighter of their limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_concurrency: int = Field(64, ge=1, le=100_000, description="calls in flight at once (the AIMD ceiling)")
    rpm: float | None = Field(None, gt=0, description="requests per minute; None: no request bucket")
    tpm: float | None = Field(None, gt=0, description="tokens per minute (prompt + completion); None: no token bucket")
    burst_s: float = Field(1.0, gt=0, le=60.0, description="seconds of rate a bucket holds: the largest burst")
    adaptive: bool = Field(True, description="adapt the window of calls in flight (AIMD) to 429s and latency spikes")
    decrease_factor: float = Field(0.5, gt=0.0, lt=1.0, description="the window is multiplied by this on a 429 or a spike")
    latency_spike_factor: float | None = Field(
        4.0, gt=1.0, description="a call slower than this many times the recent mean is a spike (None: latency is ignored)"
    )
    latency_spike_min_s: float = Field(1.0, ge=0.0, description="a spike must also be this many seconds above the mean")

    def tighter(self, other: LimitConfig) -> LimitConfig:
        """The tighter of two configs, field by field (unset rates count as unlimited)."""
        def low(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        return self.model_copy(update={
            "max_concurrency": min(self.max_concurrency, other.max_concurrency),
            "rpm": low(self.rpm, other.rpm),
            "tpm": low(self.tpm, other.tpm),
            "burst_s": min(self.burst_s, other.burst_s),
            "adaptive": self.adaptive or other.adaptive,
            "latency_spike_factor": low(self.latency_spike_factor, other.latency_spike_factor),
        })


class LimiterStats(BaseModel):
    """What one endpoint's limiter saw (see :meth:`EndpointLimiter.stats`): plain data, for the
    run's metrics. Waits are summed over calls (ten calls waiting 1 s each count 10 s)."""

    endpoint: str = Field(description="the endpoint key (URL and key fingerprint, or provider)")
    instance: str = Field(description="which limiter took these figures (one per process and Limits registry)")
    calls: int = Field(0, description="calls admitted")
    throttled: int = Field(0, description="429 replies")
    decreases: int = Field(0, description="times the AIMD window was cut (429s and latency spikes, once per round)")
    retries: int = Field(0, description="retries of failed calls")
    retry_wait_s: float = Field(0.0, description="seconds slept before retries (backoff or Retry-After, whichever is longer)")
    retry_after_waits: int = Field(0, description="429 replies that said how long to wait (Retry-After)")
    retry_after_s: float = Field(0.0, description="seconds the endpoint was paused for its callers by Retry-After")
    window_min: int = Field(0, description="smallest AIMD window of calls in flight")
    window_max: int = Field(0, description="largest AIMD window of calls in flight")
    window: int = Field(0, description="the window at the end")
    peak_in_flight: int = Field(0, description="most calls in flight at once")
    slot_wait_s: float = Field(0.0, description="seconds calls waited for a slot (calls in flight)")
    rate_wait_s: float = Field(0.0, description="seconds calls waited for the request and token buckets and Retry-After pauses")
    rpm: float = Field(0.0, description="requests per minute in force at the end (0: none)")
    tpm: float = Field(0.0, description="tokens per minute in force at the end (0: none)")


_SUMMED = ("calls", "throttled", "decreases", "retries", "retry_wait_s", "retry_after_waits", "retry_after_s", "slot_wait_s", "rate_wait_s")


def merge_limiter_stats(stats: Iterable[LimiterStats]) -> dict[str, LimiterStats]:
    """Endpoint key → its figures over every limiter that reported them.

    Snapshots of one limiter (thread shards sharing a registry each report it) count once, the
    latest (most calls); limiters of one endpoint in several processes add up their counts and
    waits, and give the largest peak and window, the smallest smallest window, and the
    smallest final window and rates (the tightest any process ended at)."""
    latest: dict[tuple[str, str], LimiterStats] = {}
    for one in stats:
        key = (one.endpoint, one.instance)
        seen = latest.get(key)
        if seen is None or (one.calls, one.retries, one.slot_wait_s) >= (seen.calls, seen.retries, seen.slot_wait_s):
            latest[key] = one
    out: dict[str, LimiterStats] = {}
    for (endpoint, _), one in sorted(latest.items()):
        seen = out.get(endpoint)
        if seen is None:
            out[endpoint] = one
            continue
        update: dict[str, Any] = {name: getattr(seen, name) + getattr(one, name) for name in _SUMMED}
        update.update(
            instance=f"{seen.instance},{one.instance}",
            window_min=min(seen.window_min, one.window_min), window_max=max(seen.window_max, one.window_max),
            window=min(seen.window, one.window), peak_in_flight=max(seen.peak_in_flight, one.peak_in_flight),
            rpm=_lowest(seen.rpm or None, one.rpm or None) or 0.0, tpm=_lowest(seen.tpm or None, one.tpm or None) or 0.0,
        )
        out[endpoint] = seen.model_copy(update=update)
    return out


def endpoint_label(endpoint: str) -> str:
    """An endpoint key as a metric name part: letters, digits and dashes (``127-0-0-1-8765-v1-key-…``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", re.sub(r"^https?://", "", endpoint)).strip("-") or "endpoint"


class SharedLimiter(Protocol):
    """Limits shared with other processes or machines (e.g. Prefect's global limits, from ``flows``)."""

    def slot(self, endpoint: str) -> AbstractAsyncContextManager[Any]:
        """Hold one call-in-flight slot of ``endpoint`` for the duration of the ``async with``."""
        ...

    async def admit(self, endpoint: str, *, tokens: int) -> None:
        """Wait until one request of ``tokens`` tokens is within ``endpoint``'s shared rate limits."""
        ...


class _Bucket:
    """A token bucket that may go into debt: a reservation is taken at once and the caller
    waits until the bucket would have covered it (so callers are served in order)."""

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount``; the seconds to wait before it is covered (0: go now)."""
        self._refill(now)
        need = min(amount, self.capacity)  # a request larger than the bucket waits for a full one
        wait = max(0.0, (need - self.level) / self.rate)
        self.level -= amount
        return wait

    def give_back(self, amount: float, now: float) -> None:
        """Return (or, if negative, take more of) a reservation."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def cap(self, remaining: float, now: float) -> None:
        """The provider says only ``remaining`` are left: never believe there are more."""
        self._refill(now)
        self.level = min(self.level, remaining)


@dataclass
class _Announced:
    """A limit a provider announced, and the longest window it was seen to have (the
    estimates of a window from a reset err short when the remaining count is rounded down)."""

    limit: int | None = None
    window_s: float | None = None

    def update(self, limit: int | None, window_s: float | None) -> float | None:
        """Learn from one response; the limit as a rate per minute (the window read as a minute when unknown)."""
        if limit is None:
            return per_minute(self.limit, self.window_s)
        if limit != self.limit:
            self.limit, self.window_s = limit, window_s
        elif window_s is not None:
            self.window_s = max(self.window_s or 0.0, window_s)
        return per_minute(self.limit, self.window_s)


@dataclass(eq=False)
class _Waiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


@dataclass
class Permit:
    """One call admitted by an :class:`EndpointLimiter`; give it back with :meth:`EndpointLimiter.release`."""

    tokens: int
    epoch: int
    started: float = 0.0
    shared: AbstractAsyncContextManager[Any] | None = None
    released: bool = False


@dataclass
class EndpointLimiter:
    """Calls in flight, requests and tokens per minute for one endpoint (see the module docs)."""

    key: str
    config: LimitConfig
    shared: SharedLimiter | None = None
    clock: Callable[[], float] = time.monotonic
    in_flight: int = 0
    peak_in_flight: int = 0
    calls: int = 0
    throttled: int = 0
    """429s seen."""
    decreases: int = 0
    """Times the window was cut (429s and latency spikes, once per round)."""
    retries: int = 0
    """Retries of failed calls (told by :meth:`record_retry`)."""
    retry_wait_s: float = 0.0
    retry_after_waits: int = 0
    """429s that came with a ``Retry-After``."""
    retry_after_s: float = 0.0
    """Seconds the endpoint was paused for its callers by ``Retry-After``."""
    slot_wait_s: float = 0.0
    """Seconds calls waited for a slot, summed over calls."""
    rate_wait_s: float = 0.0
    """Seconds calls waited for the buckets and pauses, summed over calls."""
    window: float = field(init=False)
    window_min: int = field(init=False)
    window_max: int = field(init=False)
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    """Tells this limiter's figures from another's of the same endpoint (another process)."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _waiters: deque[_Waiter] = field(default_factory=deque, repr=False)
    _epoch: int = 0
    _mean_latency: float | None = None
    _latency_samples: int = 0
    _paused_until: float = 0.0
    _requests: _Bucket | None = field(default=None, repr=False)
    _tokens: _Bucket | None = field(default=None, repr=False)
    _learned_rpm: float | None = None
    _learned_tpm: float | None = None
    _announced_requests: _Announced = field(default_factory=_Announced, repr=False)
    _announced_tokens: _Announced = field(default_factory=_Announced, repr=False)

    def __post_init__(self) -> None:
        self.window = float(self.config.max_concurrency)
        self.window_min = self.window_max = self.limit
        self._rebuild_buckets()

    # ---- configuration -------------------------------------------------------
    @property
    def limit(self) -> int:
        """Calls allowed in flight now (the AIMD window, whole)."""
        return max(1, int(self.window))

    @property
    def rpm(self) -> float | None:
        """Requests per minute in force (the configured one, or a lower one the provider announced)."""
        return self._requests.per_minute if self._requests else None

    @property
    def tpm(self) -> float | None:
        """Tokens per minute in force."""
        return self._tokens.per_minute if self._tokens else None

    @property
    def counts_tokens(self) -> bool:
        """Whether calls must say how many tokens they reserve."""
        return self._tokens is not None

    def tighten(self, config: LimitConfig) -> None:
        """Adopt the tighter of the current and ``config`` limits (another model on this endpoint)."""
        with self._lock:
            new = self.config.tighter(config)
            if new == self.config:
                return
            self.config = new
            self.window = min(self.window, float(new.max_concurrency))
            if not self.calls:  # a model sharing the endpoint before any call: the start is the tighter limit
                self.window_max = self.limit
            self.window_min = min(self.window_min, self.limit)
            self._rebuild_buckets()

    def _rebuild_buckets(self) -> None:
        now = self.clock()
        rpm = _lowest(self.config.rpm, self._learned_rpm)
        tpm = _lowest(self.config.tpm, self._learned_tpm)
        if rpm is None:
            self._requests = None
        elif self._requests is None or self._requests.per_minute != rpm:
            self._requests = _rebucket(self._requests, rpm, self.config.burst_s, now)
        if tpm is None:
            self._tokens = None
        elif self._tokens is None or self._tokens.per_minute != tpm:
            self._tokens = _rebucket(self._tokens, tpm, self.config.burst_s, now)

    # ---- admission -----------------------------------------------------------
    async def acquire(self, tokens: int = 0) -> Permit:
        """Wait for a slot, then for the request and token buckets; returns the permit to release."""
        rate_wait = await self._wait_pause()
        slot_wait = await self._take_slot()
        try:
            with self._lock:
                now = self.clock()
                wait = max(0.0, self._paused_until - now)
                if self._requests is not None:
                    wait = max(wait, self._requests.reserve(1, now))
                if self._tokens is not None:
                    wait = max(wait, self._tokens.reserve(tokens, now))
                permit = Permit(tokens=tokens, epoch=self._epoch)
            try:
                if wait > 0:
                    rate_wait += await self._sleep(wait)
                if self.shared is not None:
                    permit.shared = self.shared.slot(self.key)
                    began = self.clock()
                    await permit.shared.__aenter__()
                    slot_wait += self.clock() - began  # waiting for a shared slot is waiting for a slot
                    try:
                        began = self.clock()
                        await self.shared.admit(self.key, tokens=tokens)
                        rate_wait += self.clock() - began
                    except BaseException:
                        await permit.shared.__aexit__(None, None, None)
                        raise
            except BaseException:
                with self._lock:
                    now = self.clock()
                    if self._requests is not None:
                        self._requests.give_back(1, now)
                    if self._tokens is not None:
                        self._tokens.give_back(tokens, now)
                raise
        except BaseException:
            self._free_slot()
            raise
        permit.started = self.clock()
        with self._lock:
            self.slot_wait_s += slot_wait
            self.rate_wait_s += rate_wait
        return permit

    async def _sleep(self, seconds: float) -> float:
        """Sleep ``seconds``; the seconds it took."""
        began = self.clock()
        await asyncio.sleep(seconds)
        return self.clock() - began

    async def _wait_pause(self) -> float:
        """Wait out a ``Retry-After`` pause of the endpoint; the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = self._paused_until - self.clock()
            if wait <= 0:
                return waited
            waited += await self._sleep(wait)

    async def _take_slot(self) -> float:
        """Take a slot of calls in flight, waiting for one if none is free; the seconds waited."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.in_flight < self.limit and not self._waiters:
                self._count_in_locked()
                return 0.0
            waiter = _Waiter(loop, loop.create_future())
            self._waiters.append(waiter)
        began = self.clock()
        try:
            await waiter.future
        except BaseException:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._waiters.remove(waiter)
            if granted:  # the slot arrived as we were cancelled: pass it on
                self._free_slot()
            raise
        return self.clock() - began

    def _count_in_locked(self) -> None:
        self.in_flight += 1
        self.calls += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _free_slot(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self._grant_locked()

    def _grant_locked(self) -> None:
        """Hand free slots to waiters, first come first served, on their own loops."""
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            try:
                waiter.loop.call_soon_threadsafe(_resolve, waiter.future)
            except RuntimeError:  # its loop is closed: nobody is waiting there any more
                continue
            waiter.granted = True
            self._count_in_locked()

    # ---- feedback ------------------------------------------------------------
    async def release(
        self,
        permit: Permit,
        *,
        ok: bool = True,
        throttled: bool = False,
        tokens_used: int | None = None,
        rate_limit: RateLimitInfo | None = None,
        retry_after_s: float | None = None,
        latency: bool = True,
    ) -> None:
        """Give back ``permit`` and learn from the call: success, a 429 (``throttled``), its
        real token count, the provider's rate-limit headers and ``Retry-After``; its latency
        too, unless ``latency`` is False (a call of another kind, e.g. an embeddings request,
        whose duration says nothing about the chat calls' usual one)."""
        if permit.released:
            return
        permit.released = True
        try:
            if permit.shared is not None:
                await permit.shared.__aexit__(None, None, None)
        finally:
            self._learn(permit, ok=ok, throttled=throttled, tokens_used=tokens_used, rate_limit=rate_limit,
                        retry_after_s=retry_after_s, latency=latency)

    def _learn(self, permit: Permit, *, ok: bool, throttled: bool, tokens_used: int | None,
               rate_limit: RateLimitInfo | None, retry_after_s: float | None, latency: bool = True) -> None:
        with self._lock:
            now = self.clock()
            took = now - permit.started
            self.in_flight -= 1
            if self._tokens is not None and tokens_used is not None:
                self._tokens.give_back(permit.tokens - tokens_used, now)
            if rate_limit is not None:
                self._observe_locked(rate_limit, now)
                if retry_after_s is None and throttled:
                    retry_after_s = rate_limit.retry_after_s
            if throttled:
                self.throttled += 1
                if retry_after_s:
                    until = now + min(retry_after_s, _MAX_PAUSE_S)
                    self.retry_after_waits += 1
                    self.retry_after_s += max(0.0, until - max(self._paused_until, now))  # overlapping pauses count once
                    self._paused_until = max(self._paused_until, until)
                self._decrease_locked(permit, "429")
            elif ok:
                if latency and self._is_spike_locked(took):
                    self._decrease_locked(permit, f"latency spike ({took:.2f}s)")
                elif self.config.adaptive and self.window < self.config.max_concurrency:
                    self.window = min(float(self.config.max_concurrency), self.window + 1.0 / self.limit)
                    self.window_max = max(self.window_max, self.limit)
            self._grant_locked()

    def _is_spike_locked(self, latency: float) -> bool:
        factor = self.config.latency_spike_factor
        if factor is None:
            return False
        mean = self._mean_latency
        self._latency_samples += 1
        self._mean_latency = latency if mean is None else 0.9 * mean + 0.1 * latency
        return (
            mean is not None and self._latency_samples > 10
            and latency > factor * mean and latency - mean > self.config.latency_spike_min_s
        )

    def _decrease_locked(self, permit: Permit, why: str) -> None:
        if not self.config.adaptive or permit.epoch != self._epoch:
            return  # already cut for this round of calls
        self._epoch += 1
        if self.window <= 1.0:
            return  # never below one call in flight
        self.decreases += 1
        before = self.limit
        self.window = max(1.0, self.window * self.config.decrease_factor)
        self.window_min = min(self.window_min, self.limit)
        log.info("%s on %s: calls in flight %d -> %d", why, self.key, before, self.limit)

    def _observe_locked(self, info: RateLimitInfo, now: float) -> None:
        rpm = self._announced_requests.update(info.limit_requests, info.window_requests_s)
        tpm = self._announced_tokens.update(info.limit_tokens, info.window_tokens_s)
        changed = False
        if rpm and rpm != self._learned_rpm:
            self._learned_rpm, changed = rpm, True
        if tpm and tpm != self._learned_tpm:
            self._learned_tpm, changed = tpm, True
        if changed:
            self._rebuild_buckets()
        if self._requests is not None and info.remaining_requests is not None:
            self._requests.cap(info.remaining_requests, now)
        if self._tokens is not None and info.remaining_tokens is not None:
            self._tokens.cap(info.remaining_tokens, now)

    def record_retry(self, wait_s: float) -> None:
        """A call to this endpoint failed and is retried after ``wait_s`` seconds (for :meth:`stats`)."""
        with self._lock:
            self.retries += 1
            self.retry_wait_s += wait_s

    def stats(self) -> LimiterStats:
        """What this limiter saw so far: 429s, retries, Retry-After pauses, the AIMD window's
        range and end, the peak of calls in flight, time waited for slots and buckets."""
        with self._lock:
            return LimiterStats(
                endpoint=self.key, instance=self.instance, calls=self.calls, throttled=self.throttled,
                decreases=self.decreases, retries=self.retries, retry_wait_s=self.retry_wait_s,
                retry_after_waits=self.retry_after_waits, retry_after_s=self.retry_after_s,
                window_min=self.window_min, window_max=self.window_max, window=self.limit,
                peak_in_flight=self.peak_in_flight, slot_wait_s=self.slot_wait_s, rate_wait_s=self.rate_wait_s,
                rpm=self.rpm or 0.0, tpm=self.tpm or 0.0,
            )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _lowest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _rebucket(old: _Bucket | None, per_minute: float, burst_s: float, now: float) -> _Bucket:
    new = _Bucket(per_minute, burst_s, now)
    if old is not None:  # keep what was spent
        old._refill(now)
        new.level = min(new.capacity, old.level)
    return new


class Limits:
    """The registry of endpoint limiters: one :class:`EndpointLimiter` per endpoint key.

    It is an explicit object, never a module global: whoever owns a scope (a gateway, a
    simulation's shards in one process) creates one and passes it to every gateway that
    must share the budget. ``shared`` adds limits across processes (see :class:`SharedLimiter`).
    Thread-safe.
    """

    def __init__(self, shared: SharedLimiter | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.shared = shared
        self._clock = clock
        self._lock = threading.Lock()
        self._limiters: dict[str, EndpointLimiter] = {}

    def limiter(self, endpoint: str, config: LimitConfig) -> EndpointLimiter:
        """The limiter of ``endpoint``; a second config for it tightens the first (see :meth:`LimitConfig.tighter`)."""
        with self._lock:
            found = self._limiters.get(endpoint)
            if found is None:
                found = self._limiters[endpoint] = EndpointLimiter(endpoint, config, shared=self.shared, clock=self._clock)
                return found
        found.tighten(config)
        return found

    def joined(self, endpoint: str, default: LimitConfig) -> EndpointLimiter:
        """The limiter of ``endpoint`` as it is, or a new one with ``default`` limits when the
        endpoint has none yet (for calls that bring no limits of their own, e.g. embeddings)."""
        with self._lock:
            found = self._limiters.get(endpoint)
            if found is None:
                found = self._limiters[endpoint] = EndpointLimiter(endpoint, default, shared=self.shared, clock=self._clock)
            return found

    def endpoints(self) -> dict[str, EndpointLimiter]:
        """Endpoint key → its limiter."""
        with self._lock:
            return dict(self._limiters)

    @property
    def peak_in_flight(self) -> int:
        """The largest peak of calls in flight on any one endpoint."""
        return max((lim.peak_in_flight for lim in self.endpoints().values()), default=0)


def endpoint_key(llm: Any) -> str:
    """Where ``llm``'s calls go and whose quota they share: its base URL (api.openai.com for an
    OpenAI model without one), else its provider; plus the fingerprint of its API key, if it
    has one (providers limit per key). See :func:`endpoint_identity`."""
    base_url = fingerprint = None
    node = llm
    while node is not None:
        base_url = base_url or getattr(node, "base_url", None)
        fingerprint = fingerprint or getattr(node, "key_fingerprint", None)
        node = getattr(node, "inner", None)
    if base_url:
        return endpoint_identity(str(base_url), fingerprint)
    provider = getattr(llm, "provider", "unknown")
    return endpoint_identity(_OPENAI_URL, fingerprint) if provider == "openai" else provider


_OPENAI_URL = "https://api.openai.com/v1"
_KEY_MARK = "#key-"


def key_fingerprint(api_key: str | SecretStr | None | Any) -> str | None:
    """A short, non-reversible fingerprint of an API key (a salted SHA-256 prefix), to tell keys
    apart in an endpoint's identity without holding or showing the key; None without a key."""
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    if not key or not isinstance(key, str):
        return None
    return hashlib.sha256(b"personae-endpoint-key\0" + key.encode("utf-8")).hexdigest()[:12]


def endpoint_identity(base_url: str, fingerprint: str | None) -> str:
    """The endpoint key of ``base_url`` reached with the key of ``fingerprint``: ``URL#key-<fingerprint>``
    (the fragment is never sent anywhere), or the bare URL without a key."""
    url = base_url.rstrip("/")
    return f"{url}{_KEY_MARK}{fingerprint}" if fingerprint else url


def endpoint_url(endpoint: str) -> str:
    """The URL (or provider) of an endpoint key, without its key fingerprint."""
    return endpoint.split(_KEY_MARK, 1)[0]


def reservation(prompt_tokens: int, max_tokens: int | None) -> int:
    """Tokens a request reserves in a tokens-per-minute bucket: its prompt and all it may generate."""
    return prompt_tokens + (max_tokens if max_tokens is not None else DEFAULT_COMPLETION_RESERVE)
