"""Endpoint limits across processes: leases on Prefect's global concurrency limits (personae.flows.limits)."""

from __future__ import annotations

import asyncio

import pytest

from _flows_support import prefect_api_session  # noqa: F401
from personae.experiment import Experiment, SimulationConfig
from personae.flows.limits import (
    Lease, endpoint_limit_configs, ensure_global_limits, flow_limits, global_limit_name, share_of,
    leased_limits, shards_at_once, slots_to_take,
)
from personae.llm.limits import LimitConfig
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
    name = global_limit_name(URL)
    assert name.startswith("personae-llm-gcl-test-invalid-v1-") and name.endswith("-calls")
    assert not set("/%&<>") & set(name)
    assert global_limit_name(URL + "#key-abc") != name


def test_a_shard_takes_its_even_share_of_what_is_free_and_at_least_one():
    assert slots_to_take(48, 0, 2) == 24  # two shards at once: half each
    assert slots_to_take(48, 24, 2) == 24  # the second one finds its half free
    assert slots_to_take(48, 40, 2) == 8  # a shard starting beside another run takes what is free
    assert slots_to_take(48, 48, 2) == 1  # none free: it waits for one
    assert slots_to_take(3, 0, 8) == 1  # more shards than slots: one each, the server queues the rest
    assert slots_to_take(5, 0, 2) == 2  # the split rounds down: 2 + 2 <= 5
    assert slots_to_take(5, 0, 1) == 5
    assert shards_at_once(SimulationConfig(shards=8, dask=True, dask_workers=2), 8) == 2
    assert shards_at_once(SimulationConfig(shards=2, dask=True, dask_workers=4), 2) == 2
    assert shards_at_once(SimulationConfig(shards=8, dask="tcp://10.0.0.1:8786"), 8) == 8  # cluster size unknown


def test_a_share_caps_the_limiter_of_its_endpoint_and_splits_the_rates():
    config = LimitConfig(max_concurrency=48, rpm=600, tpm=48_000)
    share = share_of(config, 12)
    assert (share.max_concurrency, share.rpm, share.tpm) == (12, 150, 12_000)
    limits = leased_limits([Lease(URL, global_limit_name(URL), 12, share)])
    limiter = limits.limiter(URL, LimitConfig(max_concurrency=64, rpm=6000))  # the model's own limits are looser
    assert (limiter.limit, limiter.rpm, limiter.tpm) == (12, 150, 12_000)
    assert limits.limiter("http://elsewhere.invalid/v1", LimitConfig(max_concurrency=64)).limit == 64  # no lease: its own

    # another key on the leased URL (one a LangChain model found itself): its calls hold a permit of the lease too
    other = limits.limiter(URL + "#key-0123", LimitConfig(max_concurrency=64))

    async def calls() -> tuple[int, int]:
        permits = [await other.acquire() for _ in range(12)]
        during = (other.in_flight, limiter.in_flight)
        blocked = asyncio.ensure_future(other.acquire())
        await asyncio.sleep(0.05)
        assert not blocked.done(), "the 13th call waits: the lease has 12 slots"
        await other.release(permits.pop())
        for permit in [await blocked, *permits]:
            await other.release(permit)
        return during

    assert asyncio.run(calls()) == (12, 12)
    assert limiter.in_flight == other.in_flight == 0


def test_without_a_server_or_for_thread_shards_limits_stay_in_process(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    exp = _experiment(default={"provider": "fake"})
    with flow_limits(exp, Settings(), other_processes=False) as limits:
        assert limits.shared is None  # thread shards: one Limits is enough
    with flow_limits(exp, Settings(llm_global_limits=False), other_processes=True) as limits:
        assert limits.shared is None


def _shard_in_another_process(experiment, shards, go, planned, held, stay, results, fail) -> None:
    """One process, standing for a Dask worker: a shard holding its lease (shard_limits) makes
    6 calls of 0.3 s through its own Limits (the model allows 8 in flight); records when each
    call held its slot. ``planned`` is set once it has sized its lease on the free slots (the
    module's own ``_plan``, observed), ``held`` once it holds it; it keeps it until ``stay`` is
    set (if given); ``fail`` makes the shard raise then."""
    import time

    from personae.flows import limits as flows_limits
    from personae.flows.limits import shard_limits

    sized = flows_limits._plan

    def plan_and_tell(*args, **kwargs):
        leases = sized(*args, **kwargs)
        planned.set()
        return leases

    flows_limits._plan = plan_and_tell

    spans: list[tuple[float, float]] = []
    out: dict = {"raised": False}

    async def call(limiter) -> None:
        permit = await limiter.acquire()
        began = time.time()
        await asyncio.sleep(0.3)
        spans.append((began, time.time()))
        await limiter.release(permit)

    async def main() -> None:
        async with shard_limits(experiment, Settings(), shards=shards) as limits:
            limiter = limits.limiter(URL, LimitConfig(max_concurrency=8))
            out["limit"] = limiter.limit
            held.set()
            await asyncio.wait_for(asyncio.gather(*(call(limiter) for _ in range(6))), timeout=300)
            out["calls"] = limiter.calls
            if stay is not None:
                assert stay.wait(300)
            if fail:
                raise RuntimeError("the shard fails")

    go.wait(120)
    try:
        asyncio.run(main())
    except RuntimeError:
        out["raised"] = True
    results.put((out, spans))


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_leases_keep_calls_across_processes_within_the_limit_and_come_back(prefect_api_session):
    """Two spawned processes (Prefect's services must not live in pytest's process, which later
    tests fork). The first shard is alone in its run: it leases all 3 slots, and raises at the
    end. The second starts while they are held: it takes 1 (none is free) and waits for it."""
    import multiprocessing

    from prefect.client.orchestration import get_client

    exp = _experiment(default={"model": "a", "base_url": URL, "max_concurrency": 3, "rpm": 6000})
    names = ensure_global_limits(endpoint_limit_configs(exp, Settings()))
    assert names == {URL: global_limit_name(URL)}

    def active() -> int:
        with get_client(sync_client=True) as client:
            return client.read_global_concurrency_limit_by_name(names[URL]).active_slots

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    go, planned, held = [ctx.Event(), ctx.Event()], [ctx.Event(), ctx.Event()], [ctx.Event(), ctx.Event()]
    stay = ctx.Event()
    procs = [  # the first keeps its lease until the second has sized its own on what was free
        ctx.Process(target=_shard_in_another_process, args=(exp, 1, go[0], planned[0], held[0], stay, results, True)),
        ctx.Process(target=_shard_in_another_process, args=(exp, 1, go[1], planned[1], held[1], None, results, False)),
    ]
    for p in procs:
        p.start()
    go[0].set()
    assert held[0].wait(300), "the first shard never got its lease"
    go[1].set()
    assert planned[1].wait(300)
    assert active() == 3 and not held[1].is_set(), "all 3 slots are the first shard's: the second waits"
    stay.set()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    (first, first_spans), (second, second_spans) = sorted(outcomes, key=lambda o: o[0]["limit"], reverse=True)
    assert (first["limit"], first["calls"], first["raised"]) == (3, 6, True)
    assert (second["limit"], second["calls"], second["raised"]) == (1, 6, False)
    assert _most_at_once(first_spans) == 3 and _most_at_once(second_spans) == 1
    assert min(b for b, _ in second_spans) >= max(e for _, e in first_spans), "the second waited for a free slot"
    assert _most_at_once(first_spans + second_spans) <= 3  # never more than the endpoint's limit
    assert active() == 0, "both leases came back, the failed shard's too"


def _flow_lease_in_another_process(experiment, results) -> None:
    """The flow's process with thread shards and ``llm_global_limits: true``: it creates the
    limit and leases what is free for its shards; reports its limiter's limit and the slots the
    server counts while the lease is held."""
    from prefect.client.orchestration import get_client

    from personae.flows.limits import flow_limits, global_limit_name

    with flow_limits(experiment, Settings(llm_global_limits=True), other_processes=False) as limits:
        limit = limits.limiter(URL + "/flow", LimitConfig(max_concurrency=64)).limit
        with get_client(sync_client=True) as client:
            held = client.read_global_concurrency_limit_by_name(global_limit_name(URL + "/flow")).active_slots
    results.put((limit, held))


def test_thread_shards_share_one_lease_of_the_flows_process(prefect_api_session):
    import multiprocessing

    from prefect.client.orchestration import get_client

    exp = _experiment(default={"model": "a", "base_url": URL + "/flow", "max_concurrency": 5})
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_flow_lease_in_another_process, args=(exp, results))
    proc.start()
    limit, held = results.get(timeout=600)
    proc.join(60)
    assert proc.exitcode == 0
    assert (limit, held) == (5, 5)  # alone on the endpoint: the whole limit, in one lease
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(global_limit_name(URL + "/flow")).active_slots == 0
