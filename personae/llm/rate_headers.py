"""A provider's rate-limit headers, in the formats providers send them.

* OpenAI (and Groq, vLLM's gateways, the test server): ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``,
  the reset as a duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``);
* Anthropic: ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the reset as an
  RFC 3339 timestamp;
* the IETF draft (``draft-ietf-httpapi-ratelimit-headers``): ``RateLimit-Limit``/``-Remaining``/``-Reset``
  (reset in seconds) with ``RateLimit-Policy: 100;w=60``, or the later structured
  ``RateLimit-Policy: "p";q=100;w=60`` and ``RateLimit: "p";r=50;t=30``; counted as requests;
* the common unsuffixed ``x-ratelimit-limit``/``-remaining``/``-reset`` (reset in seconds, or a Unix
  time), counted as requests;
* ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms``.

**The window.** A limit is "so many per window", and the window is not always a minute (OpenAI
also has per-day limits, the IETF policy says its own). It is taken from the policy when a header
states it (``w=``); otherwise it is derived from the reset of a continuously refilled bucket
(OpenAI's and Anthropic's): the reset is the time to refill what was used, so
``window = reset * limit / (limit - remaining)``, known to within the reset's resolution (``6ms``
to the millisecond, an RFC 3339 timestamp to the second): a second, minute, hour or day when
exactly one of them fits, else the estimate when it is known to within 10 %, else nothing
(``1s`` after one request of 60 could be a 1 s or a 60 s window).
Without a window the limit is read as per minute, as before.

Unreadable values are ignored (logged at debug level): a header never makes a call fail.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from pydantic import BaseModel, ConfigDict

__all__ = ["RateLimitInfo", "parse_duration", "parse_rate_limit_headers", "derive_window", "retry_after_of"]

log = logging.getLogger(__name__)


class RateLimitInfo(BaseModel):
    """What a provider said about its quota in one response.

    ``limit_*`` is the quota per ``window_*_s`` seconds (``None``: unknown, read as a minute);
    ``reset_*_s`` the seconds until the quota is whole again.
    """

    model_config = ConfigDict(frozen=True)

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    window_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    window_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def requests_per_minute(self) -> float | None:
        """The request limit as a rate per minute (the window read as a minute when unknown)."""
        return per_minute(self.limit_requests, self.window_requests_s)

    @property
    def tokens_per_minute(self) -> float | None:
        """The token limit as a rate per minute (the window read as a minute when unknown)."""
        return per_minute(self.limit_tokens, self.window_tokens_s)


def per_minute(limit: int | None, window_s: float | None) -> float | None:
    """``limit`` per ``window_s`` seconds as a rate per minute (``window_s`` None: a minute)."""
    if not limit:
        return None
    return limit * 60.0 / (window_s or 60.0)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_STANDARD_WINDOWS = (1.0, 60.0, 3600.0, 86400.0)
_MIN_WINDOW_S, _MAX_WINDOW_S = 0.05, 7 * 86400.0
_TOLERANCE = 0.1  # a window derived from a reset is used when known to within this share
_UNIX_TIME = 1e9  # a "reset" this large is a Unix time, not a number of seconds


def parse_duration(value: str | None) -> float | None:
    """Seconds in an OpenAI reset value (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or plain seconds; None if unreadable."""
    read = _duration(value)
    return None if read is None else read[0]


def _duration(value: str | None) -> tuple[float, float] | None:
    """``(seconds, resolution in seconds)`` of a duration, or None if unreadable."""
    if not value:
        return None
    text = value.strip().lower()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return (max(0.0, seconds), _resolution(text, 1.0)) if math.isfinite(seconds) else None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    number, unit = parts[-1]
    return sum(float(n) * _UNITS[u] for n, u in parts), _resolution(number, _UNITS[unit])


def _resolution(number: str, unit_s: float) -> float:
    """The step of the last digit of ``number`` (in ``unit_s`` seconds): ``3.5`` s → 0.1 s."""
    decimals = len(number.partition(".")[2])
    return unit_s * 10.0 ** -decimals


def _timestamp(value: str, now: float) -> tuple[float, float] | None:
    """``(seconds from now, resolution)`` of an RFC 3339 timestamp, or None if unreadable."""
    text = value.strip()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    fraction = re.search(r"\d{2}:\d{2}:\d{2}\.(\d+)", text)
    resolution = 10.0 ** -len(fraction.group(1)) if fraction else 1.0
    return max(0.0, when.timestamp() - now), resolution


def _seconds_or_unix_time(value: str, now: float) -> tuple[float, float] | None:
    """A reset given as seconds from now, or as a Unix time (GitHub-style ``x-ratelimit-reset``)."""
    read = _duration(value)
    if read is None:
        return None
    seconds, resolution = read
    return (max(0.0, seconds - now), resolution) if seconds > _UNIX_TIME else read


def _retry_after(value: str, now: float) -> float | None:
    """``Retry-After``: seconds, or an HTTP date."""
    read = _duration(value)
    if read is not None:
        return read[0]
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def _int(value: str) -> int | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return int(number) if math.isfinite(number) and number >= 0 else None


def derive_window(limit: int | None, remaining: int | None, reset: tuple[float, float] | None) -> float | None:
    """The window of a continuously refilled bucket of ``limit`` from its ``remaining`` count and
    ``(reset seconds, resolution)``: ``reset * limit / (limit - remaining)``.

    The reset is known to within its resolution, which gives a range of windows: the one
    standard window (a second, minute, hour or day, give or take 10 %) in it, else the estimate
    itself when the range is within 10 %; None when the figures cannot tell (nothing used, a
    reset too coarse, several standard windows possible, an implausible result)."""
    if not limit or remaining is None or reset is None or not 0 <= remaining < limit:
        return None
    seconds, resolution = reset
    if seconds <= 0 or not math.isfinite(resolution):
        return None
    scale = limit / (limit - remaining)
    window, low, high = seconds * scale, max(0.0, seconds - resolution) * scale, (seconds + resolution) * scale
    standard = [w for w in _STANDARD_WINDOWS if 0.9 * low <= w <= 1.1 * high]
    if len(standard) == 1:
        return standard[0]
    if standard or resolution > _TOLERANCE * seconds or not _MIN_WINDOW_S <= window <= _MAX_WINDOW_S:
        return None
    return window


class _Reader:
    """Reads header values, ignoring (and logging) the unreadable ones."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def get(self, name: str, parse: Callable[[str], object | None]) -> object | None:
        raw = self.headers.get(name)
        if raw is None:
            return None
        value = parse(str(raw)) if str(raw).strip() else None
        if value is None:
            log.debug("ignoring unreadable rate-limit header %s: %.60r", name, raw)
        return value


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitInfo | None:
    """The rate-limit state in response headers (a case-insensitive mapping, as httpx's), or None
    when there is none. ``now`` (Unix time) reads timestamps; by default the clock."""
    now = time.time() if now is None else now
    read = _Reader(headers)
    fields: dict[str, object] = {}
    for kind in ("requests", "tokens"):
        quota = _openai(read, kind, now) or _anthropic(read, kind, now) or (_ietf(read, now) if kind == "requests" else None)
        if quota is not None:
            limit, remaining, reset, window = quota
            if window is None:
                window = derive_window(limit, remaining, reset)
            fields.update({
                f"limit_{kind}": limit, f"remaining_{kind}": remaining,
                f"reset_{kind}_s": reset[0] if reset else None, f"window_{kind}_s": window,
            })
    retry_ms = read.get("retry-after-ms", _int)
    retry_after = retry_ms / 1000.0 if isinstance(retry_ms, int) else read.get("retry-after", lambda v: _retry_after(v, now))
    info = RateLimitInfo(**fields, retry_after_s=retry_after)
    return info if any(v is not None for v in info.model_dump().values()) else None


_Quota = tuple[int | None, int | None, tuple[float, float] | None, float | None]
"""limit, remaining, (reset seconds, resolution), window seconds when a header states it."""


def _quota(limit: object, remaining: object, reset: object, window: float | None = None) -> _Quota | None:
    if limit is None and remaining is None and reset is None:
        return None
    return limit, remaining, reset, window  # type: ignore[return-value]


def _openai(read: _Reader, kind: str, now: float) -> _Quota | None:
    if kind == "requests" and all(read.headers.get(f"x-ratelimit-{f}-requests") is None for f in ("limit", "remaining", "reset")):
        # the unsuffixed form counts requests; its reset is seconds or a Unix time, a fixed window
        return _quota(read.get("x-ratelimit-limit", _int), read.get("x-ratelimit-remaining", _int),
                      _no_window(read.get("x-ratelimit-reset", lambda v: _seconds_or_unix_time(v, now))))
    return _quota(read.get(f"x-ratelimit-limit-{kind}", _int), read.get(f"x-ratelimit-remaining-{kind}", _int),
                  read.get(f"x-ratelimit-reset-{kind}", _duration))


def _anthropic(read: _Reader, kind: str, now: float) -> _Quota | None:
    prefix = f"anthropic-ratelimit-{kind}"
    return _quota(read.get(f"{prefix}-limit", _int), read.get(f"{prefix}-remaining", _int),
                  read.get(f"{prefix}-reset", lambda v: _timestamp(v, now)))


def _no_window(reset: object) -> tuple[float, float] | None:
    """A fixed window's reset: the seconds are kept, but no window can be derived from it."""
    return (reset[0], math.inf) if isinstance(reset, tuple) else None


def _ietf(read: _Reader, now: float) -> _Quota | None:
    policy = read.get("ratelimit-policy", _policy)
    window = policy[1] if isinstance(policy, tuple) else None
    structured = read.get("ratelimit", _structured)
    if isinstance(structured, tuple):
        remaining, reset = structured
        limit = policy[0] if isinstance(policy, tuple) else None
        return _quota(limit, remaining, _no_window((reset, 1.0) if reset is not None else None), window)
    limit = read.get("ratelimit-limit", lambda v: _int(v.split(",")[0].split(";")[0]))
    if window is None and read.headers.get("ratelimit-limit") is not None:  # draft 03: "100, 100;w=60"
        inline = _policy(str(read.headers["ratelimit-limit"]))
        window = inline[1] if inline else None
    return _quota(limit, read.get("ratelimit-remaining", _int),
                  _no_window(read.get("ratelimit-reset", lambda v: _seconds_or_unix_time(v, now))), window)


_PARAM = re.compile(r';\s*([a-z]+)\s*=\s*"?([^;,"]*)"?')


def _policy(value: str) -> tuple[int | None, float | None] | None:
    """``(quota, window s)`` of the first policy stating a window in ``100;w=60``, ``10;w=1, 1000;w=3600``
    or ``"default";q=100;w=60`` (else the first item's quota, with no window)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    read: list[tuple[int | None, float | None]] = []
    for item in items:
        params = dict(_PARAM.findall(item))
        quota = _int(params["q"]) if "q" in params else _int(item.split(";")[0])
        window = _duration(params.get("w"))
        read.append((quota, window[0] if window and window[0] > 0 else None))
    stated = [r for r in read if r[1] is not None]
    found = stated[0] if stated else (read[0] if read else None)
    return None if found is None or found == (None, None) else found


def _structured(value: str) -> tuple[int | None, float | None] | None:
    """``(remaining, reset s)`` of a structured ``RateLimit: "p";r=50;t=30``."""
    params = dict(_PARAM.findall(value.split(",")[0]))
    remaining = _int(params["r"]) if "r" in params else None
    reset = _duration(params["t"])[0] if "t" in params and _duration(params["t"]) else None
    return None if remaining is None and reset is None else (remaining, reset)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait before a retry: ``Retry-After`` (or ``retry-after-ms``), else, when a quota
    is spent (``x-ratelimit-remaining-*`` is 0), the time until it resets."""
    info = parse_rate_limit_headers(headers)
    if info is None:
        return None
    if info.retry_after_s is not None:
        return info.retry_after_s
    waits = [
        reset for remaining, reset in ((info.remaining_requests, info.reset_requests_s), (info.remaining_tokens, info.reset_tokens_s))
        if remaining == 0 and reset is not None
    ]
    return max(waits) if waits else None
