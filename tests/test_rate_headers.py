"""Rate-limit headers as providers send them: OpenAI's durations, Anthropic's RFC 3339 resets, the
IETF draft's policies, GitHub-style Unix times, Retry-After dates; the window of each limit derived
from its reset where the figures tell it, and bad values ignored."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from personae.llm.limits import EndpointLimiter, LimitConfig
from personae.llm.rate_headers import RateLimitInfo, derive_window, parse_rate_limit_headers

NOW = datetime(2026, 3, 5, 19, 23, 13, tzinfo=timezone.utc)


def parse(headers: dict[str, str]) -> RateLimitInfo | None:
    return parse_rate_limit_headers(httpx.Headers(headers), now=NOW.timestamp())


def rfc3339(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_openai_reply_with_millisecond_reset_shows_a_minute_window():
    # a reply from api.openai.com after one request: 6 ms to refill 1 of 10,000 is a 60 s window
    info = parse({
        "x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": "9999", "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-limit-tokens": "2000000", "x-ratelimit-remaining-tokens": "1999976", "x-ratelimit-reset-tokens": "0s",
    })
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s) == (10000, 9999, pytest.approx(0.006))
    assert info.window_requests_s == 60.0 and info.requests_per_minute == 10000
    # a reset of 0s tells nothing about the window: the limit is read per minute
    assert (info.limit_tokens, info.reset_tokens_s, info.window_tokens_s) == (2_000_000, 0.0, None)
    assert info.tokens_per_minute == 2_000_000


def test_openai_per_day_limit_is_not_read_as_per_minute():
    # a free-tier requests-per-day limit: 7m12s to refill 1 of 200 is a day
    info = parse({"x-ratelimit-limit-requests": "200", "x-ratelimit-remaining-requests": "199", "x-ratelimit-reset-requests": "7m12s"})
    assert info.window_requests_s == 86400.0
    assert info.requests_per_minute == pytest.approx(200 / 1440)


def test_openai_docs_example_gives_no_window_it_cannot_support():
    # the example in OpenAI's rate-limit guide: "1s" after 1 of 60 could be a 1 s or a 60 s window,
    # and 6 minutes to refill 16 of 150,000 tokens is no plausible window: both stay per minute
    info = parse({
        "x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s",
    })
    assert (info.reset_requests_s, info.reset_tokens_s) == (1.0, 360.0)
    assert (info.window_requests_s, info.window_tokens_s) == (None, None)
    assert (info.requests_per_minute, info.tokens_per_minute) == (60, 150000)


def test_anthropic_headers_with_rfc3339_resets():
    info = parse({
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "25",
        "anthropic-ratelimit-requests-reset": rfc3339(30),
        "anthropic-ratelimit-tokens-limit": "40000", "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": rfc3339(1.5),
        "anthropic-ratelimit-input-tokens-limit": "30000", "retry-after": "12",
    })
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s) == (50, 25, 30.0)
    assert info.window_requests_s == 60.0
    # a reset 1 s away, to the second, fits a 1 s and a 60 s window alike: no window
    assert (info.limit_tokens, info.remaining_tokens, info.window_tokens_s) == (40000, 39000, None)
    assert info.retry_after_s == 12.0


def test_anthropic_fractional_timestamp_and_offset():
    reset = (NOW + timedelta(seconds=45)).astimezone(timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")
    info = parse({"anthropic-ratelimit-requests-limit": "4000", "anthropic-ratelimit-requests-remaining": "1000",
                  "anthropic-ratelimit-requests-reset": reset})
    assert info.reset_requests_s == pytest.approx(45.0)
    assert info.window_requests_s == 60.0


def test_ietf_draft_policy_states_the_window():
    info = parse({"RateLimit-Limit": "100", "RateLimit-Remaining": "50", "RateLimit-Reset": "50", "RateLimit-Policy": "100;w=3600"})
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s, info.window_requests_s) == (100, 50, 50.0, 3600.0)
    assert info.requests_per_minute == pytest.approx(100 / 60)
    # draft 03: the policy inside RateLimit-Limit, several policies (the first with a window counts)
    info = parse({"RateLimit-Limit": "10, 10;w=1, 1000;w=3600", "RateLimit-Remaining": "9", "RateLimit-Reset": "1"})
    assert (info.limit_requests, info.window_requests_s) == (10, 1.0)
    # the structured form of later drafts
    info = parse({"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"default";r=50;t=30'})
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s, info.window_requests_s) == (100, 50, 30.0, 60.0)


def test_ietf_reset_of_a_fixed_window_is_not_a_refill_time():
    # without a policy, a fixed window's reset says when it ends, not how long it is
    info = parse({"RateLimit-Limit": "100", "RateLimit-Remaining": "50", "RateLimit-Reset": "30"})
    assert (info.limit_requests, info.reset_requests_s, info.window_requests_s) == (100, 30.0, None)


def test_unsuffixed_headers_with_a_unix_time_reset():
    # GitHub's form: the reset is a Unix time
    reset = int(NOW.timestamp()) + 1200
    info = parse({"x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999", "x-ratelimit-reset": str(reset)})
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s, info.window_requests_s) == (5000, 4999, 1200.0, None)
    info = parse({"x-ratelimit-limit": "60", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "17"})
    assert (info.remaining_requests, info.reset_requests_s) == (0, 17.0)


@pytest.mark.parametrize(
    "headers, seconds",
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "Thu, 05 Mar 2026 19:23:43 GMT"}, 30.0),
        ({"retry-after": "Thu, 05 Mar 2026 19:00:00 GMT"}, 0.0),  # already past
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(headers, seconds):
    assert parse(headers).retry_after_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "-3", "x-ratelimit-reset-requests": "6m0x"},
        {"x-ratelimit-limit-tokens": "1e400", "x-ratelimit-reset-tokens": "nan"},
        {"anthropic-ratelimit-requests-limit": "", "anthropic-ratelimit-requests-reset": "tomorrow"},
        {"anthropic-ratelimit-tokens-reset": "2026-13-45T99:00:00Z"},
        {"ratelimit-policy": ";w=;q=", "ratelimit": '"x";r=-1;t=soon'},
        {"retry-after": "inf"},
        {"retry-after": "Someday, 99 Foo 2026"},
        {"retry-after-ms": "later"},
        {"x-ratelimit-reset": "12 seconds"},
    ],
)
def test_unreadable_values_are_ignored_and_logged_at_debug(headers, caplog):
    with caplog.at_level(logging.DEBUG, logger="personae.llm.rate_headers"):
        assert parse(headers) is None
    assert "unreadable rate-limit header" in caplog.text


def test_one_bad_value_does_not_hide_the_good_ones():
    info = parse({"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "many", "x-ratelimit-reset-requests": "120ms"})
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s, info.window_requests_s) == (500, None, 0.12, None)


@pytest.mark.parametrize(
    "limit, remaining, reset, window",
    [
        (600, 599, (0.1, 0.001), 60.0),
        (20, 19, (0.1, 0.001), 2.0),  # not a standard window, but known to 1 %
        (60, 59, (1.0, 1.0), None),  # 1 s or 60 s
        (60, 60, (0.0, 0.001), None),  # nothing used
        (60, 61, (1.0, 0.001), None),
        (None, 5, (1.0, 0.001), None),
    ],
)
def test_derive_window(limit, remaining, reset, window):
    assert derive_window(limit, remaining, reset) == (pytest.approx(window) if window else None)


async def test_limiter_adopts_an_announced_per_day_limit_as_its_rate():
    limiter = EndpointLimiter("https://api.example/v1", LimitConfig(max_concurrency=4, rpm=1000))
    permit = await limiter.acquire()
    await limiter.release(permit, rate_limit=parse(
        {"x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14399", "x-ratelimit-reset-requests": "6s"}
    ))
    assert limiter.rpm == pytest.approx(10.0)  # 14,400 a day, not 14,400 a minute (the configured 1000 is looser)
    # a later reply whose reset tells nothing keeps the window learned for the same limit
    permit = await limiter.acquire()
    await limiter.release(permit, rate_limit=parse({"x-ratelimit-limit-requests": "14400", "x-ratelimit-remaining-requests": "14400"}))
    assert limiter.rpm == pytest.approx(10.0)
