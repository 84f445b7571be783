"""A provider's rate-limit headers: ``x-ratelimit-*`` (OpenAI's names and reset format) and ``Retry-After``."""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

__all__ = ["RateLimitInfo", "parse_duration", "parse_rate_limit_headers"]


class RateLimitInfo(BaseModel):
    """What a provider said about its quota in one response (``x-ratelimit-*``, ``Retry-After``)."""

    model_config = ConfigDict(frozen=True)

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(value: str | None) -> float | None:
    """Seconds in an OpenAI reset value (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or plain seconds; None if unreadable."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """The rate-limit state in response headers (case-insensitive mapping), or None when there is none."""
    get = headers.get
    retry_after = parse_duration(get("retry-after"))
    retry_ms = _int(get("retry-after-ms"))
    if retry_ms is not None:
        retry_after = retry_ms / 1000.0
    info = RateLimitInfo(
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        reset_requests_s=parse_duration(get("x-ratelimit-reset-requests")),
        limit_tokens=_int(get("x-ratelimit-limit-tokens")),
        remaining_tokens=_int(get("x-ratelimit-remaining-tokens")),
        reset_tokens_s=parse_duration(get("x-ratelimit-reset-tokens")),
        retry_after_s=retry_after,
    )
    return info if any(v is not None for v in info.model_dump().values()) else None
