"""Kill a batch anywhere, under load, and rerun it: the result is exactly the uninterrupted one.

A driver process imports personae once and forks one child per run. Each child runs the
same batch (dyads with the critic and the LLM termination detector, plus a group
discussion) into its own folder and counts the events of its life: model calls,
checkpoint writes (a step's task writes, then the step's checkpoint), output appends and
checkpoint deletions. A run armed with kill event ``k`` SIGKILLs itself at its k-th event,
at once or after a seeded delay of up to a few milliseconds, from another thread, so the
kill lands inside whatever the event loop is doing then. The kill moments are drawn with
a fixed seed over the whole life of the batch, from before its first event to after its
last append. Every core is kept busy by a CPU hog the whole time.

Each killed folder is then rerun until every conversation is complete, and compared with
an uninterrupted reference: the same ids, utterances (texts, speakers, turn numbers,
critic verdicts), stop reasons; no torn line, no id written twice, no empty conversation.

A second test replays the resume bug this suite was written for (a checkpoint misread as
finished when a step's tasks had saved their writes but the next checkpoint was not yet
written) and shows that the write-time invariant records those conversations as failed,
never as complete; with the invariant disabled the same kills write truncated
conversations as complete, so the test has teeth.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

KILL_MOMENTS = 32

DRIVER = textwrap.dedent(
    r"""
    import asyncio, json, os, signal, sys, threading, time
    from pathlib import Path

    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    import personae.graphs.runner as runner
    from personae.embeddings import HashingEmbedder
    from personae.graphs import GraphConfig, make_jobs, simulate_batch
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM
    from personae.models import Persona, Role, Scenario

    personas = [Persona(name=n, occupation="clerk", description=f"{n} is patient and precise.")
                for n in ("Ann", "Bob", "Cid", "Dee", "Eve")]
    support = Scenario(name="Support", setting="A call about a router that drops the connection.", max_turns=8, min_turns=2,
                       roles=[Role(name="client", goal="fix the router"), Role(name="responder", goal="help within policy")])
    meeting = Scenario(name="Meeting", setting="Neighbours plan a street party.", max_turns=6, min_turns=2,
                       roles=[Role(name="neighbour", goal="agree on a date")])
    jobs = (make_jobs(personas, [support], GraphConfig(termination={"detector_every": 3}), n_conversations=4, seed=11)
            + make_jobs(personas, [meeting], GraphConfig(kind="group", group_size=3), n_conversations=1, seed=12))

    pending_kill = threading.Event()

    def arm(events_path, kill_at, delay_s, kill_label=None):
        # count the events of this run's life; SIGKILL the process at event kill_at, or at
        # the kill_at-th event labelled kill_label
        count = 0
        labelled = {}
        log = open(events_path, "a", buffering=1)

        def event(what):
            nonlocal count
            count += 1
            labelled[what.split(":")[0]] = labelled.get(what.split(":")[0], 0) + 1
            log.write(what + "\n")
            hit = count == kill_at if kill_label is None else labelled.get(kill_label) == kill_at and what.startswith(kill_label)
            if kill_at is not None and hit:
                kill = lambda: os.kill(os.getpid(), signal.SIGKILL)
                if delay_s:
                    pending_kill.set()
                    threading.Timer(delay_s, kill).start()
                else:
                    kill()

        def around(cls, name, label):
            original = getattr(cls, name)
            async def wrapped(*args, **kwargs):
                result = await original(*args, **kwargs)
                event(label)
                return result
            setattr(cls, name, wrapped)

        original_complete = Gateway.complete
        async def complete(self, request, *, role="default", **options):
            event("call:" + role)
            return await original_complete(self, request, role=role, **options)
        Gateway.complete = complete
        around(AsyncSqliteSaver, "aput_writes", "writes")
        around(AsyncSqliteSaver, "aput", "checkpoint")
        around(AsyncSqliteSaver, "adelete_thread", "forget")
        original_append = runner.append_jsonl
        def append(path, records):
            event("append:before")
            original_append(path, records)
            event("append:after")
        runner.append_jsonl = append

    def child(case):
        work = Path(case["work"])
        work.mkdir(parents=True, exist_ok=True)
        if case.get("old_resume_check"):  # the resume check before the fix: "no task left to run" read as "finished"
            runner._finished = lambda snapshot: bool(snapshot.values) and not snapshot.next
        if case.get("no_invariant"):
            runner.completeness_problem = lambda *args, **kwargs: None
        arm(work / "events.log", case.get("kill_at"), case.get("delay_s", 0.0), case.get("kill_label"))
        result = asyncio.run(simulate_batch(
            jobs, gateway=Gateway(FakeLLM(seed=2)), out_path=work / "out.jsonl", checkpoint_path=work / "ckpt.sqlite",
            embedder=HashingEmbedder(), concurrency=3, retry_failed=case.get("retry_failed", False),
        ))
        (work / "result.json").write_text(result.model_dump_json())
        if pending_kill.is_set():  # a delayed kill armed near the end lands during shutdown, not after it
            time.sleep(60)

    results = []
    for case in json.loads(sys.stdin.read()):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(case)
            except BaseException as exc:
                import traceback; traceback.print_exc()
                code = 3
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        results.append({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None})
    print(json.dumps(results))
    """
)


@pytest.fixture
def cpu_hog():
    """Busy loops on every core for the length of the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _drive(cases: list[dict], tmp_path: Path) -> list[dict]:
    """Run ``cases`` in forked children of one driver process; their exit signals and codes."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], input=json.dumps(cases), capture_output=True, text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _lines(work: Path) -> list[str]:
    path = work / "out.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _records(work: Path) -> list[dict]:
    return [json.loads(line) for line in _lines(work) if line.strip()]


def _events(work: Path) -> list[str]:
    path = work / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def _checkpointed_threads(work: Path) -> set[str]:
    import sqlite3

    if not (work / "ckpt.sqlite").exists():
        return set()
    with sqlite3.connect(work / "ckpt.sqlite") as conn:
        return {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}


def _reference(tmp_path: Path) -> tuple[dict[str, dict], list[str]]:
    work = tmp_path / "reference"
    [outcome] = _drive([{"work": str(work)}], tmp_path)
    assert outcome == {"signal": None, "code": 0}
    records = _records(work)
    assert len(records) == 5 and all(r["status"] == "complete" and r["utterances"] for r in records)
    return {r["id"]: r for r in records}, _events(work)


@pytest.mark.timeout(1800)
def test_sigkill_anywhere_under_load_then_rerun_gives_exactly_the_reference(tmp_path, cpu_hog):
    expected, life = _reference(tmp_path)
    rng = random.Random(20261201)
    # kill moments over the whole life: the first event, the last, seeded ones between; at once, or a little
    # later from another thread (a run whose work ends first waits for its kill)
    moments = sorted({1, len(life), *rng.sample(range(2, len(life)), KILL_MOMENTS - 2 - 6)})
    kills = [{"kill_at": k, "delay_s": rng.choice([0.0, 0.0, 0.001, 0.004])} for k in moments]
    # ... and one inside each kind of event (which event comes k-th depends on how the conversations interleave)
    kinds = Counter(event.split(":")[0] for event in life)
    assert set(kinds) == {"call", "writes", "checkpoint", "append", "forget"}
    kills += [{"kill_label": kind, "kill_at": rng.randint(1, kinds[kind]), "delay_s": 0.0} for kind in sorted(kinds)]
    kills += [{"kill_label": "append", "kill_at": 2 * rng.randint(1, kinds["append"] // 2) - 1, "delay_s": 0.0}]  # before a write
    kills = [{**kill, "work": str(tmp_path / f"kill{i:02d}")} for i, kill in enumerate(kills)]
    outcomes = _drive(kills, tmp_path)
    assert len(outcomes) >= 30 and all(o["signal"] == 9 for o in outcomes), [(k, o) for k, o in zip(kills, outcomes) if o["signal"] != 9]
    killed_at = {kill["work"]: _events(Path(kill["work"]))[-1] for kill in kills}
    assert {e.split(":")[0] for e in killed_at.values()} >= set(kinds)

    # rerun every killed folder to completion: a plain rerun, then retry_failed if anything failed
    pending = [kill["work"] for kill in kills]
    for attempt in range(3):
        outcomes = _drive([{"work": w, "retry_failed": attempt > 0} for w in pending], tmp_path)
        assert all(o == {"signal": None, "code": 0} for o in outcomes), outcomes
        pending = [w for w in pending if any(r["status"] != "complete" for r in _records(Path(w)))]
        if not pending:
            break
    assert not pending, f"still failed after reruns: {pending}"

    for kill in kills:
        work = Path(kill["work"])
        where = f"killed at {kill.get('kill_label', 'event')} {kill['kill_at']} ({killed_at[kill['work']]}), +{kill['delay_s']} s"
        lines = _lines(work)
        assert all(line.strip() for line in lines), where
        records = [json.loads(line) for line in lines]  # no torn line: every line parses
        ids = [r["id"] for r in records]
        assert sorted(ids) == sorted(expected), f"{where}: each id exactly once"  # no duplicate, none missing
        for record in records:
            want = expected[record["id"]]
            assert record["status"] == "complete" and record["utterances"], where  # never empty
            assert record["utterances"] == want["utterances"], f"{where}: {record['id']}"  # texts, turns, critic verdicts
            assert record["stop_reason"] == want["stop_reason"], where
        assert not (_checkpointed_threads(work) & set(expected)), f"{where}: finished checkpoints cleared"


def _kills_after_task_writes(life: list[str], n: int) -> list[int]:
    """Kill moments right after a step's task writes were saved and before its checkpoint: the resume bug's window."""
    return [i + 1 for i, event in enumerate(life) if event == "writes"][: n]


@pytest.mark.timeout(900)
def test_the_invariant_keeps_a_misread_checkpoint_from_being_written_complete(tmp_path):
    expected, life = _reference(tmp_path)
    moments = _kills_after_task_writes(life, 12)
    assert len(moments) == 12

    def replay(tag: str, **sabotage) -> list[dict]:
        kills = [{"work": str(tmp_path / f"{tag}{i:02d}"), "kill_at": k} for i, k in enumerate(moments)]
        assert all(o["signal"] == 9 for o in _drive(kills, tmp_path))
        assert all(o["code"] == 0 for o in _drive([{"work": k["work"], **sabotage} for k in kills], tmp_path))
        return [r for k in kills for r in _records(Path(k["work"]))]

    # the old resume check with the invariant: what it would have written complete is recorded failed, with the reason
    guarded = replay("guarded", old_resume_check=True)
    caught = [r for r in guarded if r["status"] == "failed"]
    assert caught and all("IncompleteConversation" in r["error"] for r in caught)
    for record in guarded:
        if record["status"] == "complete":
            assert record["utterances"] == expected[record["id"]]["utterances"]
    # ... and without the invariant, the same kills write truncated conversations as complete (the bug as reported)
    unguarded = replay("unguarded", old_resume_check=True, no_invariant=True)
    truncated = [r for r in unguarded if r["status"] == "complete" and r["utterances"] != expected[r["id"]]["utterances"]]
    assert truncated
