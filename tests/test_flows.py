"""The Prefect flows end to end on the fake model: sharded simulation, identical reruns
served from the cache, a simulation killed mid-batch and rerun, Dask shards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from _flows_support import fake_experiment, prefect_api_session, run_cli, subprocess_env  # noqa: F401
from personae.experiment import load_experiment
from personae.jsonl import read_jsonl_dicts
from personae.settings import Settings
from personae.tracking import pipeline_runs

pytestmark = pytest.mark.slow


def _conversations(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _job_ids(exp_path: Path, data_dir: Path) -> set[str]:
    from personae.graphs.runner import make_jobs
    from personae.jsonl import read_jsonl
    from personae.models import Persona

    exp = load_experiment(exp_path)
    personas = read_jsonl(Settings(data_dir=data_dir).run_dir(exp.name) / "personas.jsonl", Persona)
    jobs = make_jobs(personas, exp.scenarios, exp.graph, n_conversations=exp.simulation.n_conversations, seed=exp.seed)
    return {job.id for job in jobs}


def test_identical_rerun_makes_zero_model_calls(tmp_path, prefect_api_session):
    exp = fake_experiment(tmp_path, n_conversations=4, shards=2)
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    out = settings.run_dir("flows-test") / "conversations.jsonl"

    first = run_cli(["run", str(exp), "--data-dir", str(data_dir)])
    assert first.exit_code == 0, first.output
    produced = sorted(_conversations(out), key=lambda c: c["id"])
    assert len(produced) == 4 and {c["status"] for c in produced} == {"complete"}

    second = run_cli(["run", str(exp), "--data-dir", str(data_dir)])  # same outputs: everything skipped
    assert second.exit_code == 0, second.output
    settings.run_dir("flows-test").rename(tmp_path / "old-run")  # drop the outputs, keep the LLM cache
    third = run_cli(["run", str(exp), "--data-dir", str(data_dir)])
    assert third.exit_code == 0, third.output

    newest_first = pipeline_runs(settings, "flows-test")
    assert len(newest_first) == 3
    third_m, second_m, first_m = (r.metrics for r in newest_first)
    assert first_m["usage.model_calls"] > 0
    assert second_m["usage.model_calls"] == 0 and second_m["simulate.conversations.new"] == 0
    assert second_m["simulate.conversations.skipped"] == 4
    # everything regenerated, every call replayed from the cache
    assert third_m["usage.model_calls"] == 0
    assert third_m["usage.cached_calls"] == first_m["usage.calls"]
    assert third_m["simulate.conversations.new"] == 4
    replayed = sorted(_conversations(out), key=lambda c: c["id"])
    def transcript(c: dict) -> list:
        return [(u["id"], u["speaker"], u["text"]) for u in c["utterances"]]

    assert [transcript(c) for c in replayed] == [transcript(c) for c in produced]


def test_killed_simulation_resumes_and_writes_every_conversation_once(tmp_path, prefect_api_session, caplog):
    n = 12
    exp = fake_experiment(tmp_path, n_conversations=n, shards=2, generate=False, max_turns=6,
                          extra={"simulation": {"n_conversations": n, "shards": 2, "concurrency": 3}})
    data_dir = tmp_path / "data"
    run_dir = Settings(data_dir=data_dir).run_dir("flows-test")
    out = run_dir / "conversations.jsonl"
    mark = tmp_path / "killed.txt"
    # SIGKILLed by tests/_kill_hook.py at the first model call after 3 conversations were written:
    # a known point, however fast the machine, with conversations done and others mid-way
    env = subprocess_env(PREFECT_API_URL=prefect_api_session.api_url, PERSONAE_TEST_KILL="written:3", PERSONAE_TEST_KILL_MARK=str(mark))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env["PYTHONPATH"]])
    armed = "import os, _kill_hook; _kill_hook.install(os.environ['PERSONAE_TEST_KILL']); from personae.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", armed, "run", str(exp), "--no-track", "--data-dir", str(data_dir), "--stage", "generate", "--stage", "simulate"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=600)  # a guard against a hang, not a measure of speed
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the run started goes with it
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed (exit {proc.returncode}): {err.decode()[-2000:]}"
    assert mark.is_file(), "killed, but not at the armed point"
    done_before = {c["id"] for _, c in read_jsonl_dicts(out)}  # a shard killed mid-append may leave a torn tail
    assert 3 <= len(done_before) < n
    half_done = set()
    for db in (run_dir / "checkpoints").glob("*.sqlite"):
        with sqlite3.connect(db) as conn:
            half_done |= {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    half_done -= done_before
    assert half_done, "the kill should leave conversations half done in the checkpoints"

    caplog.set_level("INFO", logger="personae.graphs.runner")
    rerun = run_cli(["run", str(exp), "--no-track", "--data-dir", str(data_dir), "--stage", "simulate"])
    assert rerun.exit_code == 0, rerun.output
    ids = [c["id"] for c in _conversations(out)]
    assert len(ids) == len(set(ids)) == n, "every conversation exactly once"
    assert set(ids) == _job_ids(exp, data_dir)
    assert {c["status"] for c in _conversations(out)} == {"complete"}
    resumed = {r.args[0] for r in caplog.records if r.getMessage().startswith("resuming ")}
    assert resumed and resumed <= half_done


def test_run_exits_1_and_says_so_when_conversations_failed(tmp_path, prefect_api_session, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on: every model call is refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    monkeypatch.setenv("PERSONAE_LLM_MAX_RETRIES", "0")
    exp = fake_experiment(tmp_path, n_conversations=2, generate=False,
                          extra={"models": {"default": {"provider": "openai", "model": "m", "base_url": url}}})
    data_dir = tmp_path / "data"
    result = run_cli(["run", str(exp), "--no-track", "--data-dir", str(data_dir), "--stage", "generate", "--stage", "simulate"])
    assert result.exit_code == 1, result.output
    out = Settings(data_dir=data_dir).run_dir("flows-test") / "conversations.jsonl"
    assert "2 of 2 conversation(s) failed" in result.output and "retry_failed" in result.output
    assert {c["status"] for c in _conversations(out)} == {"failed"}
    assert all(f"connection refused at {url}" in c["error"] for c in _conversations(out))


def test_memory_on_a_local_qdrant_held_by_another_client_fails_clearly_then_works(tmp_path, prefect_api_session):
    from personae.errors import StoreLockedError
    from personae.memory import open_qdrant

    exp = fake_experiment(tmp_path, n_conversations=2, generate=False, max_turns=3, extra={"memory": {"enabled": True}})
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    holder = open_qdrant(settings)  # stands for another process using the local store
    try:
        with pytest.raises(StoreLockedError, match="Qdrant server"):
            run_cli(["run", str(exp), "--no-track", "--data-dir", str(data_dir)])
    finally:
        holder.close()
    ok = run_cli(["run", str(exp), "--no-track", "--data-dir", str(data_dir)])
    assert ok.exit_code == 0, ok.output
    conversations = _conversations(settings.run_dir("flows-test") / "conversations.jsonl")
    assert len(conversations) == 2 and {c["status"] for c in conversations} == {"complete"}
    with open_qdrant(settings) as handle:
        assert handle.client.count("personae_memory").count > 0
