"""The test server's quota mode: requests and tokens per minute, enforced like a paid endpoint.

Each quota is a strict token bucket holding ``window_s`` seconds of its rate (a bucket of
``rpm * window_s / 60`` requests, refilled continuously at ``rpm / 60`` per second). A
request is admitted when one request and its tokens (prompt + ``max_tokens``, or
:data:`~personae.llm.limits.DEFAULT_COMPLETION_RESERVE` without it) are in the buckets;
once answered, the token reservation is corrected to the reply's real usage. A request
that does not fit is answered 429 with ``Retry-After`` (whole seconds, as OpenAI sends
it), ``retry-after-ms`` and the ``x-ratelimit-*`` headers; admitted replies carry the same
``x-ratelimit-*`` headers, in OpenAI's format (``x-ratelimit-reset-requests: 1.5s``). Their limit is
the bucket (``rpm * window_s / 60``: the quota per minute with the default 60 s window) and
their reset is consistent with it, so a client derives the window and with it the rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from personae.llm.limits import reservation

__all__ = ["ServerQuota", "format_duration"]


def format_duration(seconds: float) -> str:
    """Seconds in OpenAI's reset format: ``20ms``, ``1.500s``, ``6m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3f}s"  # to the millisecond, trailing zeros kept: the precision shows
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


@dataclass
class _StrictBucket:
    per_minute: float
    capacity: float
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.per_minute / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` fits (0: it fits now); a request larger than the bucket waits for a full one."""
        need = min(amount, self.capacity)
        return max(0.0, (need - self.level) / self.rate)


class ServerQuota:
    """Requests- and tokens-per-minute buckets of the test server (thread-safe)."""

    def __init__(self, *, rpm: int | None, tpm: int | None, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        now = clock()
        self.requests = _StrictBucket(rpm, rpm * window_s / 60.0, rpm * window_s / 60.0, now) if rpm else None
        self.tokens = _StrictBucket(tpm, tpm * window_s / 60.0, tpm * window_s / 60.0, now) if tpm else None
        self.admitted = 0
        self.rejected = 0

    def admit(self, prompt_tokens: int, max_tokens: int | None) -> tuple[int | None, dict[str, str]]:
        """Take one request and its reserved tokens: ``(reserved tokens, headers)`` when admitted,
        ``(None, headers)`` with ``Retry-After`` when a quota is spent."""
        tokens = reservation(prompt_tokens, max_tokens)
        with self._lock:
            now = self._clock()
            for bucket in (self.requests, self.tokens):
                if bucket is not None:
                    bucket.refill(now)
            wait = max(
                self.requests.wait_for(1) if self.requests else 0.0,
                self.tokens.wait_for(tokens) if self.tokens else 0.0,
            )
            if wait > 0:
                self.rejected += 1
                headers = self._headers()
                headers["Retry-After"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                return None, headers
            if self.requests is not None:
                self.requests.level -= 1
            if self.tokens is not None:
                self.tokens.level -= tokens
            self.admitted += 1
            return tokens, self._headers()

    def settle(self, reserved: int, used: int) -> None:
        """Correct an admitted request's token reservation to what its reply really used."""
        if self.tokens is None:
            return
        with self._lock:
            self.tokens.refill(self._clock())
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + reserved - used)

    def _headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` as OpenAI means them: the limit is what the bucket holds (per
        ``window_s``), the remaining count is out of it, and the reset is the time until the
        bucket is whole again counted from that remaining count, so a client can derive the window
        (``reset * limit / (limit - remaining)``) and with it the rate."""
        headers: dict[str, str] = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                limit = max(1, int(bucket.capacity))
                remaining = min(limit, max(0, int(bucket.level)))
                headers[f"x-ratelimit-limit-{name}"] = str(limit)
                headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
                headers[f"x-ratelimit-reset-{name}"] = format_duration((limit - remaining) / bucket.rate)
        return headers
