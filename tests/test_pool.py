"""A batch over worker processes (personae.graphs.pool): same results as one process, whole
appended lines, one limit of calls in flight shared by the processes (counted by the test
server over real HTTP), and resume after a worker is SIGKILLed.

Workers are spawned processes, so what they need is picklable: the gateway comes from
:class:`~personae.testing.pytest_plugin.ServerGatewayFactory`, the kill from a module-level
factory here. The assertions are on counts and content, never on time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import sqlite3
from pathlib import Path

import pytest
from _flows_support import fake_experiment, prefect_api_session, run_cli  # noqa: F401
from _graph_helpers import SCENARIO, persona

from personae.embeddings import HashingEmbedder
from personae.errors import ConfigError, WorkerProcessError
from personae.graphs import make_jobs, simulate_batch
from personae.graphs.config import GraphConfig
from personae.graphs.pool import AUTO_JOBS_PER_PROCESS, part_path, resolve_processes, shard_jobs
from personae.jsonl import read_jsonl_dicts
from personae.llm.limits import LimitConfig, Limits
from personae.llm.process_limits import ProcessSlots, split_rates
from personae.settings import Settings
from personae.testing.pytest_plugin import ServerGatewayFactory
from personae.testing.server import OpenAITestServer, TestServerConfig

TURNS = 6


def _jobs(n: int) -> list:
    config = GraphConfig(critic={"enabled": False}, termination={"detector": False, "max_turns": TURNS})
    return make_jobs([persona(f"P{i}") for i in range(8)], [SCENARIO.model_copy(update={"max_turns": TURNS})], config,
                     n_conversations=n, seed=3)


def _content(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Conversation id → its transcript (speaker, text), from a batch output file."""
    return {c["id"]: [(u["speaker"], u["text"]) for u in c["utterances"]] for _, c in read_jsonl_dicts(path)}


async def _batch(factory: ServerGatewayFactory, jobs: list, out: Path, *, processes: int, checkpoint: Path | None = None, **options):
    gateway = factory(Limits())
    try:
        return await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoint, embedder=HashingEmbedder(dim=64),
                                    concurrency=len(jobs), processes=processes, gateway_factory=factory, **options), gateway
    finally:
        await gateway.aclose()


async def test_two_processes_write_the_same_conversations_as_one(tmp_path):
    jobs = _jobs(10)
    with OpenAITestServer(TestServerConfig()) as server:
        factory = ServerGatewayFactory(server.base_url, max_concurrency=8)
        one, _ = await _batch(factory, jobs, tmp_path / "one.jsonl", processes=1)
        gc_before = gc.get_threshold()
        two, gateway = await _batch(factory, jobs, tmp_path / "two.jsonl", processes=2, checkpoint=tmp_path / "ck.sqlite")
        assert gc.get_threshold() == gc_before  # the workers raise their own collector threshold, never the caller's
    assert (one.processes, one.completed, two.processes, two.completed, two.failed) == (1, 10, 2, 10, 0)
    assert two.worker_cpu_s > 0
    lines = list(read_jsonl_dicts(tmp_path / "two.jsonl"))  # every line whole JSON (a torn one would raise or be skipped)
    assert len(lines) == 10 and len({c["id"] for _, c in lines}) == 10
    assert (tmp_path / "two.jsonl").read_bytes().endswith(b"\n")
    assert _content(tmp_path / "two.jsonl") == _content(tmp_path / "one.jsonl")
    assert all(len(t) == TURNS for t in _content(tmp_path / "two.jsonl").values())
    assert gateway.usage.total().calls == 10 * TURNS  # the workers' usage is added to the caller's gateway
    # each worker checkpointed its own part, and deleted each finished conversation's checkpoint
    for index in range(2):
        with sqlite3.connect(part_path(tmp_path / "ck.sqlite", index, 2)) as db:
            assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)
    rerun, _ = await _batch(ServerGatewayFactory("http://127.0.0.1:9/v1"), jobs, tmp_path / "two.jsonl", processes=2)
    assert (rerun.skipped, rerun.completed) == (10, 0)  # nothing left: stays in this process, calls nothing


async def test_calls_in_flight_across_processes_never_exceed_the_one_limit(tmp_path):
    """Each worker's own limit is 4 and so is the shared one: the server must never see more than 4.

    The server holds its replies until 4 requests are in flight at once, so both workers have
    conversations waiting for a slot while 4 are held: without a shared limit it would see 8.
    """
    jobs = _jobs(12)
    config = TestServerConfig(latency_s=0.05, hold_until_in_flight=4, hold_s=60.0)
    with OpenAITestServer(config) as server:
        result, _ = await _batch(ServerGatewayFactory(server.base_url, max_concurrency=4), jobs, tmp_path / "c.jsonl", processes=2)
        assert result.processes == 2 and result.completed == 12
        assert server.gate_opened and server.peak_in_flight == 4
        assert server.endpoint_counts["chat.completions"] == 12 * TURNS


async def test_without_the_shared_limit_two_processes_would_double_the_calls_in_flight(tmp_path):
    """The control of the test above: a shared limit of 8 over workers of 4 each lets the server see 8,
    so both workers really run calls at the same time (the limit above is what holds them to 4)."""
    jobs = _jobs(12)
    config = TestServerConfig(latency_s=0.05, hold_until_in_flight=8, hold_s=60.0)
    with OpenAITestServer(config) as server:
        gateway = ServerGatewayFactory(server.base_url, max_concurrency=8)(Limits())
        try:
            result = await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=None,
                                          concurrency=12, processes=2, gateway_factory=ServerGatewayFactory(server.base_url, max_concurrency=4))
        finally:
            await gateway.aclose()
        assert result.completed == 12
        assert server.gate_opened and server.peak_in_flight == 8


@dataclasses.dataclass(frozen=True)
class KillOneWorker:
    """A gateway factory that arms tests/_kill_hook.py in the first worker to claim ``claim``:
    SIGKILL at its first model call after it wrote ``after`` conversations."""

    inner: ServerGatewayFactory
    claim: str
    after: int

    def __call__(self, limits: Limits):
        try:
            os.close(os.open(self.claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            import _kill_hook

            os.environ["PERSONAE_TEST_KILL_MARK"] = self.claim + ".hit"
            _kill_hook.install(f"written:{self.after}")
        return self.inner(limits)


async def test_a_killed_worker_loses_nothing_and_a_rerun_resumes(tmp_path):
    jobs = _jobs(12)
    out, checkpoint = tmp_path / "c.jsonl", tmp_path / "ck.sqlite"
    with OpenAITestServer(TestServerConfig(latency_s=0.02)) as server:
        factory = ServerGatewayFactory(server.base_url, max_concurrency=4)
        await _batch(factory, jobs, tmp_path / "reference.jsonl", processes=1)
        killer = KillOneWorker(factory, str(tmp_path / "claim"), after=2)
        gateway = factory(Limits())
        with pytest.raises(WorkerProcessError, match="killed by signal SIGKILL"):
            await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoint, embedder=HashingEmbedder(dim=64),
                                 concurrency=3, processes=2, gateway_factory=killer)
        await gateway.aclose()
        assert Path(str(tmp_path / "claim") + ".hit").is_file(), "killed, but not at the armed point"
        written = _content(out)
        assert 2 <= len(written) < 12  # the killed worker's 2 and whatever the other finished, all whole lines
        half_done: set[str] = set()
        for index in range(2):
            with sqlite3.connect(part_path(checkpoint, index, 2)) as db:
                half_done |= {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}
        half_done -= set(written)  # a conversation written just before the kill may still have its checkpoint
        assert half_done, "the kill should leave conversations half done in the checkpoints"
        rerun, _ = await _batch(factory, jobs, out, processes=2, checkpoint=checkpoint)
    assert rerun.skipped == len(written) and rerun.completed == 12 - len(written)
    final = _content(out)
    assert len(list(read_jsonl_dicts(out))) == 12  # every conversation exactly once
    assert final == _content(tmp_path / "reference.jsonl")  # and the resumed ones as an uninterrupted run wrote them


async def test_a_batch_in_processes_needs_what_can_cross_a_process(tmp_path):
    jobs = _jobs(4)
    factory = ServerGatewayFactory("http://127.0.0.1:9/v1")
    gateway = factory(Limits())
    try:
        with pytest.raises(ConfigError, match="gateway_factory"):
            await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=None, processes=2)
        with pytest.raises(ConfigError, match="on_done"):
            await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=None, processes=2,
                                 gateway_factory=factory, on_done=print)
        with pytest.raises(ConfigError, match="picklable"):
            await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=None, processes=2,
                                 gateway_factory=lambda limits: factory(limits))
    finally:
        await gateway.aclose()
    assert not (tmp_path / "c.jsonl").exists()


def test_processes_rule_and_validation():
    assert resolve_processes("auto", 2 * AUTO_JOBS_PER_PROCESS - 1, cores=8) == 1  # small runs stay in one process
    assert resolve_processes("auto", 2 * AUTO_JOBS_PER_PROCESS, cores=8) == 2
    assert resolve_processes("auto", 100 * AUTO_JOBS_PER_PROCESS, cores=2) == 2  # never more than the cores
    assert resolve_processes(4, 3) == 3  # never more processes than jobs
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ConfigError, match="processes"):
            resolve_processes(bad, 10)
    jobs = _jobs(10)
    assert shard_jobs(jobs, 3) == shard_jobs(list(jobs), 3)  # deterministic: a rerun finds each part's checkpoints
    assert sorted(j.id for part in shard_jobs(jobs, 3) for j in part) == sorted(j.id for j in jobs)


def test_rates_are_split_and_slots_shared_between_processes():
    config = LimitConfig(max_concurrency=6, rpm=600, tpm=90_000)
    assert split_rates(config, 3) == config.model_copy(update={"rpm": 200, "tpm": 30_000})
    slots = ProcessSlots.create({"http://x/v1": config}, processes=3)
    (limiter,) = slots.limits().endpoints().values()
    assert (limiter.rpm, limiter.tpm, limiter.config.max_concurrency) == (200, 30_000, 6)

    async def hold_all() -> int:
        held = [slots.slot("http://x/v1") for _ in range(6)]
        for h in held:
            await h.__aenter__()
        waiting = asyncio.ensure_future(slots.slot("http://x/v1").__aenter__())
        await asyncio.sleep(0.2)
        blocked = not waiting.done()
        await held[0].__aexit__(None, None, None)  # one freed: the waiter gets it
        await asyncio.wait_for(waiting, 30)
        waiting.cancel()
        return blocked

    assert asyncio.run(hold_all())


@pytest.mark.slow
def test_the_simulate_flow_runs_its_shards_in_worker_processes(tmp_path, prefect_api_session, caplog):
    caplog.set_level("DEBUG", logger="personae.graphs.pool")
    contents = {}
    for processes in (1, 2):
        exp = fake_experiment(tmp_path, name=f"pool-{processes}", n_conversations=6, generate=False, max_turns=4,
                              extra={"simulation": {"n_conversations": 6, "shards": 1, "concurrency": 3, "processes": processes}})
        data_dir = tmp_path / f"data-{processes}"
        result = run_cli(["run", str(exp), "--no-track", "--data-dir", str(data_dir), "--stage", "generate", "--stage", "simulate"])
        assert result.exit_code == 0, result.output
        run_dir = Settings(data_dir=data_dir).run_dir(f"pool-{processes}")
        contents[processes] = _content(run_dir / "conversations.jsonl")
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.sqlite"))
        assert checkpoints == [f"shard-{i:04d}-of-{processes:04d}.sqlite" for i in range(processes)]
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("started worker process shard-")]
    assert sorted(m.split()[3] for m in started) == ["shard-0", "shard-1"]  # the 2-process run only, one worker per shard
    assert len(contents[2]) == 6 and contents[2] == contents[1]


def test_simulation_processes_in_the_experiment_file(tmp_path):
    import json

    import yaml

    from personae.experiment import load_experiment

    (tmp_path / "personas.jsonl").write_text(json.dumps({"name": "Ana"}) + "\n")

    def load(simulation: dict, **extra):
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({
            "name": "exp-1", "models": {"default": {"provider": "fake"}}, "personas_file": "personas.jsonl",
            "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}], "graph": {"kind": "dyad"},
            "simulation": simulation, **extra,
        }))
        return load_experiment(path)

    assert load({"n_conversations": 10}).simulation_processes() == 1  # auto, small: one process
    assert load({"n_conversations": 10, "processes": 2}).simulation_processes() == 2
    many = load({"n_conversations": 100 * AUTO_JOBS_PER_PROCESS})
    assert many.simulation.processes == "auto" and many.simulation_processes() >= 1
    # local memory: one process, whatever auto would say
    assert load({"n_conversations": 100 * AUTO_JOBS_PER_PROCESS}, memory={"enabled": True}).simulation_processes() == 1
    for bad, words in (({"processes": 0}, "processes"), ({"processes": "many"}, "processes"),
                       ({"processes": 2, "dask": True}, "dask_workers")):
        with pytest.raises(ConfigError, match=words) as info:
            load({"n_conversations": 10, **bad})
        assert "exp.yaml" in str(info.value)
    with pytest.raises(ConfigError, match="Qdrant server"):
        load({"n_conversations": 10, "processes": 2}, memory={"enabled": True})


def test_worker_processes_get_no_more_than_the_lease_of_their_flow():
    """With Prefect's global limits the flow's process leases a share of an endpoint; the slots
    its worker processes share are sized to that share, not to the endpoint's whole limit."""
    from personae.flows.simulate import _within
    from personae.llm import Limits
    from personae.llm.limits import LimitConfig

    limits = Limits()
    limits.limiter("http://a/v1", LimitConfig(max_concurrency=3, rpm=60))
    configs = {"http://a/v1": LimitConfig(max_concurrency=8, rpm=600), "http://b/v1": LimitConfig(max_concurrency=8)}
    sized = _within(configs, limits)
    assert (sized["http://a/v1"].max_concurrency, sized["http://a/v1"].rpm) == (3, 60)
    assert sized["http://b/v1"] == configs["http://b/v1"]  # not leased: unchanged
    assert _within(configs, Limits()) == configs  # no lease (no Prefect server): the configs as they are
