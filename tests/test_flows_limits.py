"""Endpoint limits across processes: Prefect's global concurrency and rate limits (personae.flows.limits)."""

from __future__ import annotations

import asyncio

import pytest

from _flows_support import prefect_api_session  # noqa: F401
from personae.experiment import Experiment
from personae.flows.limits import PrefectLimits, endpoint_limit_configs, ensure_global_limits, global_limit_names, limits_for
from personae.llm.limits import LimitConfig, Limits
from personae.settings import Settings

pytestmark = pytest.mark.slow

URL = "http://gcl-test.invalid/v1"


def _experiment(**models) -> Experiment:
    return Experiment.model_validate({
        "name": "exp", "population": {"size": 1}, "graph": {"kind": "dyad"},
        "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}], "models": models,
    })


def test_endpoint_configs_and_limit_names():
    exp = _experiment(default={"model": "a", "base_url": URL, "rpm": 600}, judge={"model": "b", "base_url": URL + "/", "max_concurrency": 4})
    configs = endpoint_limit_configs(exp, Settings(llm_max_concurrency=16))
    assert configs == {URL: LimitConfig(max_concurrency=4, rpm=600)}
    names = global_limit_names(URL, configs[URL])
    assert names.calls.startswith("personae-llm-gcl-test-invalid-v1-") and names.concurrency == 4
    assert names.requests and names.requests_per_s == 10 and names.requests_limit == 10 and names.tokens is None
    assert not set("/%&<>") & set(names.calls + names.requests)


def test_without_a_server_or_for_thread_shards_limits_stay_in_process(monkeypatch):
    exp = _experiment(default={"provider": "fake"})
    assert limits_for(exp, Settings()).shared is None  # thread shards: one Limits is enough
    assert limits_for(exp, Settings(llm_global_limits=False), other_processes=True).shared is None


def test_prefect_global_limits_cap_calls_across_separate_limiters(prefect_api_session):
    config = LimitConfig(max_concurrency=2, rpm=6000)
    names = ensure_global_limits({URL: config})

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        calls = client.read_global_concurrency_limit_by_name(names[URL].calls)
        requests = client.read_global_concurrency_limit_by_name(names[URL].requests)
    assert calls.limit == 2 and requests.slot_decay_per_second == pytest.approx(100.0)

    # two registries stand for two processes: each alone would allow 4 calls in flight
    shared = PrefectLimits(names)
    limiters = [Limits(shared=shared).limiter(URL, LimitConfig(max_concurrency=4)) for _ in range(2)]
    state = {"now": 0, "peak": 0}

    async def call(limiter) -> None:
        permit = await limiter.acquire()
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.3)
        state["now"] -= 1
        await limiter.release(permit)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(call(limiters[i % 2]) for i in range(8))), timeout=300)

    asyncio.run(main())
    assert state["peak"] == 2
    assert sum(lim.calls for lim in limiters) == 8
