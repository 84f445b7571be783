"""A batch killed with SIGKILL mid-conversation resumes with exactly the expected utterances."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from personae.embeddings import HashingEmbedder
    from personae.graphs import GraphConfig, make_jobs, simulate_batch
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM
    from personae.models import Persona, Role, Scenario

    work = Path(sys.argv[1])

    class LoggedFake(FakeLLM):
        async def complete(self, request):
            response = await super().complete(request)
            with open(work / "calls.log", "a") as log:
                log.write("call\\n")
            return response

    personas = [Persona(name=n, occupation="clerk", description=f"{n} is patient.") for n in ("Ann", "Bob", "Cid", "Dee")]
    scenario = Scenario(name="Support", setting="A call about a router.", max_turns=8, min_turns=2,
                        roles=[Role(name="client", goal="fix the router"), Role(name="responder", goal="help")])
    config = GraphConfig(termination={"detector_every": 3})
    jobs = make_jobs(personas, [scenario], config, n_conversations=4, seed=11)
    gateway = Gateway(LoggedFake(seed=2, latency_s=float(sys.argv[2])))
    result = asyncio.run(simulate_batch(jobs, gateway=gateway, out_path=work / "out.jsonl",
                                        checkpoint_path=work / "ckpt.sqlite", embedder=HashingEmbedder(), concurrency=2))
    print(result.model_dump_json())
    """
)


def _run(work: Path, latency: float) -> subprocess.Popen:
    work.mkdir(parents=True, exist_ok=True)
    script = work / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, str(script), str(work), str(latency)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _calls(work: Path) -> int:
    path = work / "calls.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _records(work: Path) -> list[dict]:
    path = work / "out.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _checkpointed_threads(work: Path) -> set[str]:
    with sqlite3.connect(work / "ckpt.sqlite") as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


@pytest.mark.timeout(180)
def test_sigkill_mid_conversation_then_rerun_gives_exactly_the_reference(tmp_path):
    reference = _run(tmp_path / "reference", 0.0)
    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err.decode()[-2000:]
    expected = {r["id"]: r for r in _records(tmp_path / "reference")}
    total_calls = _calls(tmp_path / "reference")
    assert len(expected) == 4 and all(r["status"] == "complete" for r in expected.values())

    work = tmp_path / "killed"
    child = _run(work, 0.05)
    deadline = time.monotonic() + 120
    while _calls(work) < total_calls * 0.6 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    assert child.poll() is None, "the batch finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    calls_before = _calls(work)
    finished_before = {r["id"] for r in _records(work)}
    mid = _checkpointed_threads(work) - finished_before
    assert len(finished_before) < 4 and mid, "expected at least one conversation interrupted mid-way"

    rerun = _run(work, 0.0)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["skipped"] == len(finished_before) and result["completed"] == 4 - len(finished_before)

    records = _records(work)
    assert sorted(r["id"] for r in records) == sorted(expected)  # each conversation written exactly once
    for record in records:
        want = expected[record["id"]]
        assert record["utterances"] == want["utterances"]  # same turns, texts, ids and critic verdicts
        assert record["stop_reason"] == want["stop_reason"]
        ids = [u["id"] for u in record["utterances"]]
        assert len(ids) == len(set(ids)) and [u["turn"] for u in record["utterances"]] == list(range(len(ids)))
    rerun_calls = _calls(work) - calls_before
    # the interrupted conversations resumed from their checkpoints instead of starting over
    # (at most the calls in flight at the kill, 2 conversations × 1 call, are made again)
    assert total_calls - calls_before <= rerun_calls <= total_calls - calls_before + 2
    assert not (_checkpointed_threads(work) & set(expected))  # finished conversations' checkpoints are cleared
    print(f"\nresume: reference {total_calls} calls; killed after {calls_before} "
          f"({len(finished_before)} finished, {len(mid)} mid-conversation); rerun made {rerun_calls} calls")


async def test_a_batch_that_stops_mid_write_leaves_the_checkpoint_file_writable(tmp_path):
    """An aborted batch can leave an uncommitted checkpoint write and a read statement kept alive by a traceback.

    SQLite then keeps the closed connection as a zombie holding the write lock, and the rerun
    failed with "database is locked" (seen as a rare failure of the dead-endpoint rerun test).
    The checkpointer rolls back on exit, so the lock goes with it.
    """
    from personae.graphs.checkpoint import sqlite_checkpointer

    path = tmp_path / "checkpoints.sqlite"
    insert = "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel) VALUES (?, '', 'c', 't', 0, 'ch')"
    async with sqlite_checkpointer(path) as saver:
        await saver.setup()
        await saver.conn.executemany(insert, [("a",), ("b",)])
        await saver.conn.commit()
        half_read = await saver.conn.execute("SELECT thread_id FROM writes")
        await half_read.fetchone()
        await saver.conn.execute(insert, ("uncommitted",))  # a cancelled step's write: never committed
    rerun = sqlite3.connect(path, timeout=1)
    try:
        rerun.execute(insert, ("rerun",))
        rerun.commit()
        assert sorted(r[0] for r in rerun.execute("SELECT thread_id FROM writes")) == ["a", "b", "rerun"]
    finally:
        rerun.close()
        del half_read


def _utterances(turns: list[int]):
    from personae.models import Utterance

    return [Utterance(speaker="p-a" if t % 2 == 0 else "p-b", turn=t, text=f"turn {t}") for t in turns]


@pytest.mark.parametrize(
    ("turns", "stop_reason", "checkpointed", "problem"),
    [
        ([], "max_turns", 0, "empty"),
        ([0, 1, 3], "max_turns", 0, "missing [2]"),
        ([0, 1, 1], "max_turns", 0, "not 0..2"),
        ([0, 1], "max_turns", 3, "checkpoint already had 3"),
        ([0, 1, 2], None, 0, "without a stop reason"),
        ([0, 1, 2], "max_turns", 3, None),
    ],
)
def test_completeness_problem_names_what_is_missing(turns, stop_reason, checkpointed, problem):
    from personae.graphs.runner import completeness_problem

    found = completeness_problem(_utterances(turns), stop_reason=stop_reason, checkpointed=checkpointed)
    assert (found is None) if problem is None else (problem in found)


async def test_a_graph_that_ends_without_its_turns_is_recorded_failed_never_complete(tmp_path):
    """The write-time invariant: a finished graph whose transcript is empty is written failed with the reason."""
    from langgraph.graph import END, START, StateGraph

    from personae.graphs import GraphConfig, make_jobs
    from personae.graphs.runner import run_conversation
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM
    from personae.models import Persona, Role, Scenario
    from personae.nodes.state import DialogueState

    async def ends_at_once(state: DialogueState) -> dict:
        return {"next_speaker": None}

    builder = StateGraph(DialogueState)
    builder.add_node("noop", ends_at_once)
    builder.add_edge(START, "noop")
    builder.add_edge("noop", END)
    scenario = Scenario(name="S", roles=[Role(name="a", goal="x"), Role(name="b", goal="y")])
    [job] = make_jobs([Persona(name="Ann"), Persona(name="Bob")], [scenario], GraphConfig(), n_conversations=1, seed=1)
    conversation = await run_conversation(job, gateway=Gateway(FakeLLM()), graph=builder.compile())
    assert conversation.status.value == "failed"
    assert conversation.error.startswith("IncompleteConversation: the transcript is empty")
