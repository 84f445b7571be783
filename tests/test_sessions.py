"""Multi-session simulations: groups meet in order, simulated time drives the memory clock,
long-term memory carries over through local Qdrant, and a kill within or between sessions resumes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from _graph_helpers import SCENARIO, persona

from personae.errors import ConfigError
from personae.graphs import GraphConfig, latest_conversations, make_jobs, simulate_batch
from personae.graphs.sessions import Sessions, parse_duration
from personae.llm import Gateway
from personae.llm.testing import FakeLLM
from personae.memory import AgentMemory, open_qdrant

PERSONAS = [persona(n) for n in ("Ann", "Bob", "Cid", "Dee")]
SESSIONS = Sessions(count=3, gap="7 days", turn_time="1 minute")


def _config() -> GraphConfig:
    return GraphConfig(
        critic={"enabled": False}, termination={"detector": False, "closing": False, "repetition": False},
        memory={"enabled": True, "reflect_threshold": 50.0},  # in-session reflection never due: only the session-start one
    )


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing in the runner catches it."""


class KilledAfter(FakeLLM):
    def __init__(self, calls: int | None, **kw) -> None:
        super().__init__(**kw)
        self.limit = calls

    async def complete(self, request):
        if self.limit is not None and len(self.requests) >= self.limit:
            raise Killed()
        return await super().complete(request)


async def _batch(jobs, root: Path, hashing_embedder, *, kill_after: int | None = None):
    """One process's run: its own Qdrant client on the path, closed at the end (one client per path)."""
    llm = KilledAfter(kill_after, seed=3)
    with open_qdrant(path=root / "qdrant") as handle:
        memory = AgentMemory(handle, hashing_embedder)
        try:
            result = await simulate_batch(
                jobs, gateway=Gateway(llm), out_path=root / "out.jsonl", checkpoint_path=root / "ckpt.sqlite",
                embedder=hashing_embedder, memory=memory, concurrency=2,
            )
        except Killed:
            return None, len(llm.requests)
        records = memory.export_records()
    return (result, records), len(llm.requests)


def test_durations_and_the_session_clock():
    assert parse_duration("7 days") == 7 * 86_400 and parse_duration("90 minutes") == 5400 and parse_duration("2h") == 7200
    assert SESSIONS.gap_steps == 7 * 24 * 60 and SESSIONS.start_step(3) == 2 * 10_080 and SESSIONS.start_s(2) == 7 * 86_400
    with pytest.raises(ValueError, match="a duration looks like"):
        Sessions(gap="next week")


def test_jobs_come_in_sessions_of_the_same_groups_each_after_the_one_before():
    jobs = make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=4, sessions=SESSIONS)
    assert [j.session for j in jobs] == [1, 1, 2, 2, 3, 3]
    for g in (0, 1):
        chain = jobs[g::2]
        assert len({j.group for j in chain}) == 1 and len({tuple(p.id for p in j.participants) for j in chain}) == 1
        assert [j.after for j in chain] == [None, chain[0].id, chain[1].id]
        assert [j.clock_start for j in chain] == [0, 10_080, 20_160] and [j.reflect_first for j in chain] == [False, True, True]
    assert jobs[0].group != jobs[1].group and len({j.id for j in jobs}) == 6
    assert [j.id for j in make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=4, sessions=SESSIONS)] == [j.id for j in jobs]
    # without sessions the ids are what they always were, and every conversation is session 1
    plain = make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=4)
    assert [j.session for j in plain] == [1, 1] and all(j.group is None and j.after is None for j in plain)


async def test_sessions_run_in_order_and_memory_carries_over_on_the_simulated_clock(tmp_path, hashing_embedder):
    jobs = make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=4, sessions=SESSIONS)
    (result, records), _ = await _batch(jobs, tmp_path, hashing_embedder)
    assert result.completed == 6 and result.unfinished == 0
    conversations = latest_conversations(tmp_path / "out.jsonl")
    by_id = {c.id: c for c in conversations}
    order = [c.id for c in conversations]
    for job in jobs:
        c = by_id[job.id]
        assert (c.metadata["session"], c.metadata["group"], c.metadata["simulated_start_s"]) == (job.session, job.group, job.start_s)
        if job.after:
            assert order.index(job.after) < order.index(job.id)
    # memory steps follow the simulated clock: a session's observations start at its session's step
    for job in jobs:
        steps = [r.step for r in records if r.conversation_id == job.id and r.kind == "observation"]
        assert steps and min(steps) >= job.clock_start and max(steps) < job.clock_start + SESSIONS.gap_steps
        assert all(r.metadata["session"] == job.session for r in records if r.conversation_id == job.id and r.kind == "observation")
    # each later session began with a reflection by its participants, at the session's first step (a persona
    # cast in two groups reflects once per session: the second group's session finds nothing new pending)
    for session in (2, 3):
        held = [j for j in jobs if j.session == session]
        for agent in {p.persona.id for j in held for p in j.participants}:
            mine = [r for r in records if r.agent_id == agent and r.conversation_id in {j.id for j in held}]
            reflections = [r for r in mine if r.kind == "reflection"]
            assert reflections, (session, agent)
            for r in reflections:
                assert r.step == min(x.step for x in mine if x.conversation_id == r.conversation_id)
    # a week later, what was said in session 1 has decayed on the clock
    with open_qdrant(path=tmp_path / "qdrant") as handle:
        memory = AgentMemory(handle, hashing_embedder)
        ann = jobs[0].participants[0].persona.id
        recalled = await memory.retrieve(ann, "router", k=200)
        first = [s for s in recalled if s.record.conversation_id == jobs[0].id]
        last = [s for s in recalled if s.record.conversation_id == jobs[4].id]
        assert first and last and max(s.recency for s in first) < min(s.recency for s in last)


@pytest.mark.timeout(300)
async def test_a_kill_within_or_between_sessions_resumes_to_the_reference(tmp_path, hashing_embedder):
    jobs = make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=4, sessions=SESSIONS)
    (_, reference_memory), total = await _batch(jobs, tmp_path / "reference", hashing_embedder)
    reference = {c.id: [(u.id, u.text) for u in c.utterances] for c in latest_conversations(tmp_path / "reference" / "out.jsonl")}
    for kill_at in (total // 5, total // 2):  # inside session 1; in session 2, after session 1 is written
        root = tmp_path / f"killed-{kill_at}"
        killed, _ = await _batch(jobs, root, hashing_embedder, kill_after=kill_at)
        assert killed is None
        partial = latest_conversations(root / "out.jsonl") if (root / "out.jsonl").exists() else []
        assert len(partial) < len(jobs)
        (result, memory), _ = await _batch(jobs, root, hashing_embedder)
        assert result.completed + result.skipped == len(jobs) and result.unfinished == 0
        resumed = {c.id: [(u.id, u.text) for u in c.utterances] for c in latest_conversations(root / "out.jsonl")}
        assert resumed == reference
        assert sorted(r.id for r in memory) == sorted(r.id for r in reference_memory)  # nothing duplicated or lost


async def test_a_failed_session_blocks_the_next_until_retried(tmp_path, hashing_embedder):
    plain = _config().model_copy(update={"memory": GraphConfig().memory})
    jobs = make_jobs(PERSONAS, [SCENARIO], plain, n_conversations=1, seed=4, sessions=Sessions(count=2))
    with pytest.raises(ConfigError, match="previous session"):
        await simulate_batch(jobs[1:], gateway=Gateway(FakeLLM()), out_path=tmp_path / "x.jsonl", checkpoint_path=None)

    class Down(FakeLLM):
        async def complete(self, request):
            from personae.errors import ModelCallError

            raise ModelCallError("down")

    out = tmp_path / "out.jsonl"
    first = await simulate_batch(jobs, gateway=Gateway(Down(), max_retries=0), out_path=out, checkpoint_path=None)
    assert (first.failed, first.blocked, first.unfinished) == (1, 1, 2)
    assert [c.metadata["session"] for c in latest_conversations(out)] == [1]
    second = await simulate_batch(jobs, gateway=Gateway(FakeLLM()), out_path=out, checkpoint_path=None, retry_failed=True)
    assert second.completed == 2 and second.unfinished == 0


def test_cli_simulate_holds_sessions_with_memory(tmp_path, cli_env):
    from typer.testing import CliRunner

    from personae.jsonl import write_jsonl

    write_jsonl(tmp_path / "personas.jsonl", PERSONAS)
    (tmp_path / "scenario.yaml").write_text(SCENARIO.model_dump_json())
    (tmp_path / "graph.yaml").write_text("critic: {enabled: false}\ntermination: {detector: false}\nmemory: {enabled: true}\n")
    args = ["simulate", "--personas", str(tmp_path / "personas.jsonl"), "--scenario", str(tmp_path / "scenario.yaml"), "-n", "2",
            "--sessions", "2", "--gap", "3 days", "--out", str(tmp_path / "out.jsonl"), "--config", str(tmp_path / "graph.yaml")]
    result = CliRunner().invoke(cli_env, args)
    assert result.exit_code == 0, result.output
    written = latest_conversations(tmp_path / "out.jsonl")
    assert sorted(c.metadata["session"] for c in written) == [1, 1, 2, 2]
    assert {c.metadata["simulated_start_s"] for c in written if c.metadata["session"] == 2} == {3 * 86_400}
    bad = CliRunner().invoke(cli_env, [*args[:-4], "--gap", "soon", *args[-4:]])
    assert bad.exit_code != 0 and "gap" in str(bad.exception or bad.output)
