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


def _calls_in_another_process(names, barrier, results) -> None:
    """One process, standing for a Dask worker: its own Limits (4 calls in flight allowed
    locally), joined to the others only by Prefect's global limit; records when each call
    held its slot."""
    import time

    shared = PrefectLimits(names)
    limiter = Limits(shared=shared).limiter(URL, LimitConfig(max_concurrency=4))
    spans: list[tuple[float, float]] = []

    async def call() -> None:
        permit = await limiter.acquire()
        began = time.time()
        await asyncio.sleep(0.3)
        spans.append((began, time.time()))
        await limiter.release(permit)

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(call() for _ in range(6))), timeout=300)

    barrier.wait(120)
    asyncio.run(main())
    results.put((limiter.calls, spans))


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_prefect_global_limits_cap_calls_across_processes(prefect_api_session):
    import multiprocessing

    config = LimitConfig(max_concurrency=2, rpm=6000)
    names = ensure_global_limits({URL: config})

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        calls = client.read_global_concurrency_limit_by_name(names[URL].calls)
        requests = client.read_global_concurrency_limit_by_name(names[URL].requests)
    assert calls.limit == 2 and requests.slot_decay_per_second == pytest.approx(100.0)

    # two spawned processes (Prefect's slot services must not live in pytest's process, which
    # later tests fork), each allowing 4 calls in flight by itself
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_calls_in_another_process, args=(names, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [n for n, _ in outcomes] == [6, 6]
    spans = [span for _, s in outcomes for span in s]
    assert _most_at_once(spans) == 2  # one budget of 2 for both processes, not 4 each
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(names[URL].calls).active_slots == 0
