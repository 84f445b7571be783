"""One limit per endpoint, really shared: calls in flight (AIMD), requests and tokens per minute.

The HTTP tests run the real openai client against the local test server, whose quota mode
answers 429 past its requests/tokens per minute. They assert counts (429s, the server's peak
of requests in flight); the throughput checks use quotas far below what a loaded machine
sustains, so the token bucket, not the CPU, sets the pace.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from personae.errors import ModelCallError
from personae.llm import Gateway, LLMRequest, LLMResponse, Message
from personae.llm.limits import EndpointLimiter, LimitConfig, Limits, parse_duration, parse_rate_limit_headers
from personae.llm.wrappers import LimitedLLM, RetryingLLM
from personae.testing.pytest_plugin import openai_llm, server_gateway
from personae.testing.quota import format_duration
from personae.testing.server import OpenAITestServer, TestServerConfig

USER = [{"role": "user", "content": "Introduce yourself in one sentence."}]


def limiter_of(gateway: Gateway) -> EndpointLimiter:
    (limiter,) = gateway.endpoint_limiters().values()
    return limiter


# ---- header parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.25", 0.25), ("7", 7.0), ("", None), ("soon", None), ("1x", None)],
)
def test_parse_duration_reads_openai_reset_format(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("seconds", [0.02, 0.5, 1.0, 1.25, 59.0, 360.0, 3725.0])
def test_server_reset_format_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.5)


def test_rate_limit_headers_are_read():
    info = parse_rate_limit_headers({
        "x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "2s",
        "retry-after": "3",
    })
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.reset_requests_s) == (500, 499, pytest.approx(0.12))
    assert (info.limit_tokens, info.remaining_tokens, info.reset_tokens_s) == (30000, 29000, 2.0)
    assert info.retry_after_s == 3.0
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_rate_limit_headers({"retry-after-ms": "250", "retry-after": "1"}).retry_after_s == 0.25


# ---- one budget of calls in flight per endpoint -------------------------------------------------------


async def test_two_models_on_one_endpoint_share_one_limit():
    # before: each model had its own limit of 4, so two models reached 8 in flight while the
    # gateway reported 4. Now the server never sees more than 4, and the gateway's peak is the server's.
    with OpenAITestServer(TestServerConfig(latency_s=0.2, hold_until_in_flight=4, hold_s=30.0)) as server:
        models = {"default": openai_llm(server, model="a"), "judge": openai_llm(server, model="b")}
        gateway = Gateway(models, max_concurrency=4)
        try:
            await asyncio.gather(*(gateway.text(USER, role="default" if i % 2 else "judge", seed=i) for i in range(24)))
        finally:
            await gateway.aclose()
    assert server.gate_opened and server.peak_in_flight == 4
    assert gateway.peak_in_flight == 4
    assert len(gateway.endpoint_limiters()) == 1
    assert {r["model"] for r in server.requests} == {"a", "b"}


def test_two_event_loops_in_two_threads_share_one_limit():
    limits = Limits()
    errors: list[BaseException] = []
    gateways: list[Gateway] = []

    with OpenAITestServer(TestServerConfig(latency_s=0.3)) as server:
        start = threading.Barrier(2)

        def worker(offset: int) -> None:
            async def run() -> None:
                gateway = Gateway(openai_llm(server), max_concurrency=4, limits=limits)
                gateways.append(gateway)
                try:
                    start.wait(30)
                    await asyncio.gather(*(gateway.text(USER, seed=offset + i) for i in range(12)))
                finally:
                    await gateway.aclose()

            try:
                asyncio.run(run())
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not errors, errors
    assert server.endpoint_counts["chat.completions"] == 24
    (limiter,) = limits.endpoints().values()
    assert limiter.calls == 24 and limiter.in_flight == 0
    assert server.peak_in_flight <= 4  # one budget for both loops, not 4 each
    assert limiter.peak_in_flight == server.peak_in_flight
    assert all(g.peak_in_flight == limiter.peak_in_flight for g in gateways)


# ---- AIMD ---------------------------------------------------------------------------------------


async def test_aimd_halves_the_window_on_429_once_per_round_and_grows_back():
    with OpenAITestServer(TestServerConfig(fault_rate=1.0, faults=["429"])) as server:
        async with server_gateway(server, max_concurrency=8, max_retries=0) as gateway:
            limiter = limiter_of(gateway)
            # eight calls started together all get a 429: one cut for the round, not eight
            results = await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(8)), return_exceptions=True)
            assert all(isinstance(r, ModelCallError) and r.status == 429 for r in results)
            assert (limiter.limit, limiter.decreases, limiter.throttled) == (4, 1, 8)
            # one at a time, each 429 is a new round: 4 -> 2 -> 1, and never below 1
            for _ in range(3):
                with pytest.raises(ModelCallError):
                    await gateway.text(USER, seed=99)
            assert limiter.limit == 1 and limiter.decreases == 3
            server.configure(fault_rate=0.0)
            windows = []
            for i in range(40):
                await gateway.text(USER, seed=1000 + i)
                windows.append(limiter.limit)
    # additive increase: one more call in flight per window of successes, back up to the ceiling
    assert windows[0] == 2 and windows == sorted(windows) and windows[-1] == 8
    assert windows.index(8) == 1 + 2 + 3 + 4 + 5 + 6 + 7 - 1


async def test_retry_waits_without_its_slot_and_feeds_429_to_aimd():
    class Throttled:
        provider, model = "fake", "throttled"

        def __init__(self) -> None:
            self.calls = 0

        async def complete(self, request: LLMRequest) -> LLMResponse:
            self.calls += 1
            if self.calls == 1:
                raise ModelCallError("HTTP 429", status=429, retryable=True)
            return LLMResponse(text="ok")

        async def aclose(self) -> None:
            pass

    limiter = EndpointLimiter("fake", LimitConfig(max_concurrency=2))
    model = RetryingLLM(LimitedLLM(Throttled(), limiter), max_retries=1, base_delay_s=0.5)
    request = LLMRequest(messages=(Message(role="user", content="hi"),))
    call = asyncio.create_task(model.complete(request))
    while limiter.throttled == 0:
        await asyncio.sleep(0.01)
    assert limiter.in_flight == 0 and not call.done()  # sleeping before its retry, without a slot
    assert (await call).text == "ok"
    assert limiter.decreases == 1 and limiter.calls == 2


# ---- rate limits against the quota server --------------------------------------------------------


async def test_limiter_at_the_quota_gets_no_429_and_reaches_the_quota():
    # the server allows 600 requests per minute with a 2 s bucket; the client's limiter is set to the
    # same 600 (a 1 s bucket): every request is admitted, and after the first burst the pace is the quota's
    rpm, n = 600, 60
    config = TestServerConfig(latency_s=0.05, quota_rpm=rpm, quota_window_s=2.0)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=8, max_retries=0, rpm=rpm) as gateway:
            started = time.perf_counter()
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(n)))
            elapsed = time.perf_counter() - started
            limiter = limiter_of(gateway)
    assert server.quota.rejected == 0 and server.quota.admitted == n and limiter.throttled == 0
    burst = rpm / 60  # the client bucket's first second
    achieved = (n - burst) / elapsed * 60
    assert achieved >= 0.9 * rpm, f"{achieved:.0f} requests/min against a quota of {rpm}"
    assert achieved <= 1.1 * rpm  # the bucket, not luck, kept it under the quota


async def test_token_limiter_at_the_quota_gets_no_429_and_reaches_the_quota():
    # max_tokens=8 is less than the server's replies want, so each reply uses all it reserved:
    # the tokens counted are the tokens the bucket let through
    tpm, n = 18_000, 80
    config = TestServerConfig(latency_s=0.05, quota_tpm=tpm, quota_window_s=2.0)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=8, max_retries=0, tpm=tpm) as gateway:
            started = time.perf_counter()
            replies = await asyncio.gather(*(gateway.text(USER, seed=i, max_tokens=8) for i in range(n)))
            elapsed = time.perf_counter() - started
    used = sum(r.usage.total_tokens for r in replies)
    assert all(r.usage.completion_tokens == 8 for r in replies)
    assert server.quota.rejected == 0 and server.quota.admitted == n
    burst = tpm / 60
    achieved = (used - burst) / elapsed * 60
    assert 0.9 * tpm <= achieved <= 1.1 * tpm, f"{achieved:.0f} tokens/min against a quota of {tpm}"


async def test_limiter_learns_the_quota_from_headers_and_honours_retry_after():
    config = TestServerConfig(quota_rpm=120, quota_window_s=1.0)  # a bucket of 2 requests, 2 per second
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=8, max_retries=3) as gateway:
            limiter = limiter_of(gateway)
            assert limiter.rpm is None
            await gateway.text(USER)
            assert limiter.rpm == 120  # x-ratelimit-limit-requests, adopted
            replies = await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(6)))
    assert len(replies) == 6
    assert server.quota.rejected == 0


async def test_quota_server_answers_429_with_headers_past_its_quota():
    import httpx

    config = TestServerConfig(quota_rpm=60, quota_window_s=2.0)  # a bucket of 2 requests
    body = {"model": "m", "messages": USER}
    with OpenAITestServer(config) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as client:
            replies = [await client.post("/chat/completions", json=body) for _ in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    ok, refused = replies[0], replies[2]
    # the limit is the bucket (2 per 2 s window), and the reset is consistent with it: a client derives
    # the 2 s window and so the quota of 60 per minute, instead of reading "2" as 2 per minute
    assert ok.headers["x-ratelimit-limit-requests"] == "2" and ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert parse_duration(ok.headers["x-ratelimit-reset-requests"]) == pytest.approx(1.0)
    info = parse_rate_limit_headers(ok.headers)
    assert info.window_requests_s == pytest.approx(2.0) and info.requests_per_minute == pytest.approx(60.0)
    assert int(refused.headers["retry-after"]) >= 1 and int(refused.headers["retry-after-ms"]) > 0
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert (server.quota.admitted, server.quota.rejected) == (2, 1)


async def test_429_pauses_the_endpoint_for_retry_after():
    limiter = EndpointLimiter("x", LimitConfig(max_concurrency=4))
    permit = await limiter.acquire()
    await limiter.release(permit, ok=False, throttled=True, retry_after_s=0.3)
    started = time.perf_counter()
    permit = await limiter.acquire()
    assert time.perf_counter() - started >= 0.25
    await limiter.release(permit)


def test_models_on_one_endpoint_share_the_tightest_limits():
    limits = Limits()
    a = limits.limiter("http://h/v1", LimitConfig(max_concurrency=8, rpm=600))
    b = limits.limiter("http://h/v1", LimitConfig(max_concurrency=4, tpm=1000))
    assert a is b and (a.limit, a.rpm, a.tpm) == (4, 600, 1000)
    assert limits.limiter("http://other/v1", LimitConfig()) is not a


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, field",
    [({"rpm": -5}, "models.default.rpm"), ({"tpm": 0}, "models.default.tpm"), ({"max_concurrency": 0}, "models.default.max_concurrency")],
)
def test_bad_model_limits_name_the_field(tmp_path, model, field):
    import json

    import yaml

    from personae.errors import ConfigError
    from personae.experiment import load_experiment

    (tmp_path / "personas.jsonl").write_text(json.dumps({"name": "Ana"}) + "\n")
    data = {
        "name": "exp", "personas_file": "personas.jsonl", "graph": {"kind": "dyad"},
        "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}],
        "models": {"default": {"provider": "fake", **model}},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_experiment(tmp_path / "exp.yaml")
    assert info.value.field == field and str(tmp_path / "exp.yaml") in str(info.value)


def test_bad_rate_setting_names_the_environment_variable(monkeypatch):
    from personae.errors import ConfigError
    from personae.settings import Settings

    monkeypatch.setenv("PERSONAE_LLM_TPM", "lots")
    with pytest.raises(ConfigError) as info:
        Settings.load()
    assert info.value.field == "llm_tpm" and "PERSONAE_LLM_TPM" in str(info.value)


async def test_experiment_models_on_one_endpoint_get_one_limiter_with_the_tightest_limits(monkeypatch):
    from personae.experiment import Experiment, build_gateway_for
    from personae.settings import Settings

    url = "http://127.0.0.1:9/v1"
    exp = Experiment.model_validate({
        "name": "exp", "personas_file": None, "population": {"size": 1},
        "graph": {"kind": "dyad"}, "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}],
        "models": {
            "default": {"model": "a", "base_url": url, "rpm": 600, "max_concurrency": 8},
            "judge": {"model": "b", "base_url": url + "/", "rpm": 300, "tpm": 20_000},
            "fake": {"provider": "fake"},
        },
    })
    gateway = build_gateway_for(exp, Settings(llm_max_concurrency=16, llm_tpm=50_000))
    try:
        limiters = gateway.endpoint_limiters()
        assert sorted(limiters) == ["fake", url]
        shared = limiters[url]
        assert (shared.limit, shared.rpm, shared.tpm) == (8, 300, 20_000)
        assert (limiters["fake"].limit, limiters["fake"].tpm) == (16, 50_000)  # the settings apply where a model sets nothing
    finally:
        await gateway.aclose()


def test_a_429_without_retry_after_waits_for_the_spent_quota_to_reset():
    from personae.llm.rate_headers import retry_after_of as _retry_after

    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s",
                         "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "6m0s"}) == 1.5
    assert _retry_after({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}) == pytest.approx(0.02)
    assert _retry_after({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}) is None
    assert _retry_after({}) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_latency_spike_narrows_the_window_and_small_jitter_does_not():
    clock = _Clock()
    limiter = EndpointLimiter("http://h/v1", LimitConfig(max_concurrency=8, latency_spike_factor=4.0, latency_spike_min_s=1.0), clock=clock)

    async def call(latency: float) -> None:
        permit = await limiter.acquire()
        clock.now += latency
        await limiter.release(permit)

    for _ in range(12):
        await call(0.2)
    await call(0.7)  # 3.5x the mean: not a spike
    await call(1.0)  # 5x the mean but only 0.8 s above it: not a spike
    assert (limiter.limit, limiter.decreases) == (8, 0)
    await call(3.0)
    assert (limiter.limit, limiter.decreases) == (4, 1)


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """The waits the limiter asks for (asyncio.sleep recorded, not slept: the tests' clock is fake)."""
    waits: list[float] = []
    original = asyncio.sleep

    async def recording_sleep(seconds: float) -> None:
        waits.append(seconds)
        await original(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    return waits


async def test_token_reservations_are_settled_to_the_real_usage(slept):
    clock = _Clock()
    limiter = EndpointLimiter("x", LimitConfig(tpm=600), clock=clock)  # 10 tokens per second, a bucket of 10
    permit = await limiter.acquire(tokens=8)
    await limiter.release(permit, tokens_used=3)  # 5 of the 8 reserved come back
    permit = await limiter.acquire(tokens=7)  # 7 left: no wait
    await limiter.release(permit, tokens_used=7)
    permit = await limiter.acquire(tokens=5)  # 0 left: waits half a second for 5 more
    await limiter.release(permit, tokens_used=5)
    assert slept == [pytest.approx(0.5)]


async def test_headers_tighten_the_buckets(slept):
    from personae.llm.limits import RateLimitInfo

    clock = _Clock()
    limiter = EndpointLimiter("x", LimitConfig(rpm=6000), clock=clock)
    permit = await limiter.acquire()
    await limiter.release(permit, rate_limit=RateLimitInfo(limit_requests=120, remaining_requests=0, limit_tokens=1000))
    assert (limiter.rpm, limiter.tpm) == (120, 1000)  # the provider's lower limits win; a token bucket appears
    permit = await limiter.acquire(tokens=1)  # no request left: wait for one at 2 per second
    await limiter.release(permit)
    assert slept == [pytest.approx(0.5)]


# ---- one limiter per endpoint and API key ------------------------------------------------------------


async def test_two_api_keys_on_one_url_get_two_limiters_and_one_key_shares_one(caplog):
    from personae.llm.openai_provider import OpenAICompatibleLLM

    secret_a, secret_b = "sk-proj-AAAA-first-key-0123456789", "sk-proj-BBBB-second-key-9876543210"
    # each limiter lets 2 calls in flight; the server holds replies until 4 are in flight at once:
    # only two limiters (one per key) can get there, one limiter shared by both keys cannot
    with OpenAITestServer(TestServerConfig(latency_s=0.05, hold_until_in_flight=4, hold_s=3.0)) as server:
        def model(key: str, name: str) -> OpenAICompatibleLLM:
            return OpenAICompatibleLLM(name, base_url=server.base_url, api_key=key)

        two_keys = Gateway({"default": model(secret_a, "a"), "judge": model(secret_b, "b")}, max_concurrency=2)
        one_key = Gateway({"default": model(secret_a, "a"), "judge": model(secret_a, "b")}, max_concurrency=2)
        try:
            limiters = two_keys.endpoint_limiters()
            assert len(limiters) == 2 and len(one_key.endpoint_limiters()) == 1
            assert {k.split("#")[0] for k in limiters} == {server.base_url.rstrip("/")}
            assert next(iter(one_key.endpoint_limiters())) in limiters  # the same key, the same identity
            with caplog.at_level(logging.DEBUG):
                await asyncio.gather(*(two_keys.text(USER, role="default" if i % 2 else "judge", seed=i) for i in range(8)))
            assert server.gate_opened and server.peak_in_flight == 4
            assert [lim.peak_in_flight for lim in limiters.values()] == [2, 2]

            server.reset_counts()  # the gate stays open: nothing is held any more
            await asyncio.gather(*(one_key.text(USER, role="default" if i % 2 else "judge", seed=100 + i) for i in range(8)))
            assert server.peak_in_flight <= 2 and one_key.peak_in_flight == 2  # the two models share the key's budget
        finally:
            await two_keys.aclose()
            await one_key.aclose()
    shown = " ".join([*limiters, *(repr(lim) for lim in limiters.values()), caplog.text])
    for secret in (secret_a, secret_b):
        assert secret not in shown and secret[8:20] not in shown  # neither the key nor a piece of it


def test_flow_endpoint_keys_match_the_gateway_keys_per_api_key(monkeypatch):
    from personae.experiment import Experiment, build_gateway_for
    from personae.flows.limits import endpoint_limit_configs
    from personae.settings import Settings

    monkeypatch.setenv("KEY_A", "sk-first")
    monkeypatch.setenv("KEY_B", "sk-second")
    url = "http://127.0.0.1:9/v1"
    exp = Experiment.model_validate({
        "name": "exp", "personas_file": None, "population": {"size": 1},
        "graph": {"kind": "dyad"}, "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}],
        "models": {
            "default": {"model": "a", "base_url": url, "api_key_env": "KEY_A", "rpm": 600},
            "judge": {"model": "b", "base_url": url, "api_key_env": "KEY_B", "rpm": 300},
            "critic": {"model": "c", "base_url": url, "api_key_env": "KEY_A", "max_concurrency": 4},
        },
    })
    settings = Settings(llm_max_concurrency=16)
    configs = endpoint_limit_configs(exp, settings)  # what the flow names Prefect's global limits after
    gateway = build_gateway_for(exp, settings)
    try:
        limiters = gateway.endpoint_limiters()
    finally:
        asyncio.run(gateway.aclose())
    assert sorted(configs) == sorted(limiters) and len(configs) == 2
    by_rpm = {c.rpm: key for key, c in configs.items()}
    assert configs[by_rpm[600]] == LimitConfig(max_concurrency=4, rpm=600)  # KEY_A's two models, the tightest
    assert (limiters[by_rpm[300]].rpm, limiters[by_rpm[300]].limit) == (300, 16)


# ---- the limiter's figures, for the run's metrics ---------------------------------------------------


async def test_limiter_stats_count_429s_retries_retry_after_pauses_and_the_window():
    config = TestServerConfig(fault_rate=0.4, faults=["429"], retry_after_s=0.1, seed=3)
    with OpenAITestServer(config) as server:
        async with server_gateway(server, max_concurrency=4, max_retries=12, retry_base_delay_s=0.01) as gateway:
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(16)))
            (stats,) = gateway.limiter_stats()
    faults = server.fault_counts["429"]
    assert faults > 0
    assert stats.calls == server.endpoint_counts["chat.completions"] == 16 + faults
    assert stats.throttled == stats.retries == stats.retry_after_waits == faults  # every 429 said Retry-After and was retried
    assert stats.retry_wait_s >= 0.1 * faults  # each retry waited at least its Retry-After
    assert stats.retry_after_s > 0
    assert stats.decreases >= 1 and stats.window_min < stats.window_max == 4 and stats.window_min <= stats.window <= 4
    assert stats.peak_in_flight <= 4 and stats.endpoint == limiter_of(gateway).key


async def test_limiter_stats_time_waited_for_slots_and_buckets():
    with OpenAITestServer(TestServerConfig(latency_s=0.2)) as server:
        # one slot: the second and third calls wait for it; no rates: nothing waits for a bucket
        async with server_gateway(server, max_concurrency=1) as gateway:
            await asyncio.gather(*(gateway.text(USER, seed=i) for i in range(3)))
            (slots,) = gateway.limiter_stats()
        # 120 requests a minute with a 1 s bucket (2 requests): the third and fourth wait for the bucket
        async with server_gateway(server, max_concurrency=8, rpm=120) as gateway:
            await asyncio.gather(*(gateway.text(USER, seed=10 + i) for i in range(4)))
            (rates,) = gateway.limiter_stats()
    assert slots.slot_wait_s > 0 and slots.rate_wait_s == 0 and slots.peak_in_flight == 1
    assert rates.rate_wait_s > 0 and rates.slot_wait_s == 0 and rates.rpm == 120


def test_stage_metrics_count_a_shared_limiter_once_and_add_up_processes():
    from personae.flows.context import StageResult
    from personae.llm.limits import LimiterStats
    from personae.tracking import limit_metrics

    url = "http://127.0.0.1:8765/v1#key-0123456789ab"
    early = LimiterStats(endpoint=url, instance="p1", calls=5, throttled=1, retries=1, window_min=4, window_max=8, window=4, peak_in_flight=6, slot_wait_s=1.0)
    late = early.model_copy(update={"calls": 9, "throttled": 2, "retries": 2, "window_min": 2, "window": 3, "peak_in_flight": 8, "slot_wait_s": 2.5})
    other = LimiterStats(endpoint=url, instance="p2", calls=4, throttled=3, retries=3, window_min=1, window_max=8, window=2, peak_in_flight=3, rate_wait_s=0.5)
    fake = LimiterStats(endpoint="fake", instance="p1", calls=7, window_min=64, window_max=64, window=64, peak_in_flight=10)
    # two thread shards reported the same limiter (p1) at different times; a Dask worker had its own (p2)
    merged = StageResult.merge([StageResult(limits=[early, fake]), StageResult(limits=[late]), StageResult(limits=[other])])
    metrics = limit_metrics(merged.limits)
    label = "limits.127-0-0-1-8765-v1-key-0123456789ab"
    assert metrics[f"{label}.calls"] == 13 and metrics[f"{label}.throttled"] == 5 and metrics[f"{label}.retries"] == 5
    assert (metrics[f"{label}.window_min"], metrics[f"{label}.window_max"], metrics[f"{label}.window"]) == (1, 8, 2)
    assert metrics[f"{label}.peak_in_flight"] == 8 and metrics[f"{label}.slot_wait_s"] == 2.5 and metrics[f"{label}.rate_wait_s"] == 0.5
    assert metrics["limits.fake.calls"] == 7
    assert metrics["limits.throttled"] == 5 and metrics["limits.retries"] == 5 and metrics["limits.peak_in_flight"] == 10
    assert metrics["limits.slot_wait_s"] == 2.5


def test_langchain_models_are_told_apart_by_their_key_too():
    from langchain_openai import ChatOpenAI

    from personae.llm.langchain_provider import LangChainLLM
    from personae.llm.limits import endpoint_key

    def model(key: str) -> LangChainLLM:
        return LangChainLLM(ChatOpenAI(model="m", base_url="http://127.0.0.1:9/v1", api_key=key))

    first, again, other = endpoint_key(model("sk-one")), endpoint_key(model("sk-one")), endpoint_key(model("sk-two"))
    assert first == again != other
    assert first.startswith("http://127.0.0.1:9/v1#key-") and "sk-one" not in first
