"""MLflow tracking: params are scrubbed of secrets, usage/cost metrics, parent/child runs,
and a real ``personae run`` leaving a complete MLflow run with no secret in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _flows_support import SECRET, fake_experiment, prefect_api_session, run_cli, secret_env  # noqa: F401 - fixtures
from personae.llm.base import LLMResponse, Usage
from personae.llm.gateway import UsageTracker
from personae.settings import Settings
from personae.tracking import (
    REDACTED,
    Tracker,
    child_runs,
    flatten,
    merge_usage,
    pipeline_runs,
    scrub_params,
    secret_values,
    usage_metrics,
    usage_to_dict,
)


def test_flatten_nests_dicts_and_lists_as_dotted_keys():
    flat = flatten({"graph": {"critic": {"enabled": True}}, "scenarios": [{"name": "a"}, {"name": "b"}], "roles": {}})
    assert flat == {"graph.critic.enabled": True, "scenarios.0.name": "a", "scenarios.1.name": "b", "roles": "{}"}


def test_scrub_redacts_secret_names_values_and_url_passwords():
    params = {
        "models.judge.api_key": "plain-value-here",
        "models.judge.api_key_env": "JUDGE_KEY",  # an env var *name*: kept
        "graph.max_tokens": 200,  # not a secret despite "token"
        "settings.qdrant_api_key": "set",
        "auth.token": "abc",
        "notes": "uses sk-abcdefghijklmnopqrstuvwx for now",
        "settings.llm_base_url": "https://alice:hunter2@llm.example.com/v1",
        "header": "Bearer abcdefghijklmnop",
        "leak": "prefix-my-env-secret-value-suffix",
    }
    clean = scrub_params(params, secrets={"my-env-secret-value"})
    assert clean["models.judge.api_key"] == REDACTED
    assert clean["models.judge.api_key_env"] == "JUDGE_KEY"
    assert clean["graph.max_tokens"] == "200"
    assert clean["settings.qdrant_api_key"] == REDACTED
    assert clean["auth.token"] == REDACTED
    assert "sk-abc" not in clean["notes"] and REDACTED in clean["notes"]
    assert "hunter2" not in clean["settings.llm_base_url"] and clean["settings.llm_base_url"].endswith("@llm.example.com/v1")
    assert "abcdefghijklmnop" not in clean["header"]
    assert clean["leak"] == f"prefix-{REDACTED}-suffix"


def test_secret_values_come_from_secret_named_env_vars_and_settings(monkeypatch):
    env = {"MY_SERVICE_TOKEN": "tok-123456", "PATH": "/usr/bin", "PWD": "/home/me", "SHORT_KEY": "abc"}
    settings = Settings(llm_api_key="sk-settings-secret")
    found = secret_values(settings, environ=env)
    assert found == {"tok-123456", "sk-settings-secret"}


def _response(cached: bool, tokens: int) -> LLMResponse:
    return LLMResponse(text="x", usage=Usage(prompt_tokens=tokens, completion_tokens=0), cached=cached, latency_s=0.0 if cached else 0.5)


def test_usage_metrics_cost_counts_only_model_calls_at_the_routed_price():
    usage = UsageTracker()
    usage.record("persona", _response(False, 1000))
    usage.record("persona", _response(True, 1000))  # cache hit: free
    usage.record("critic", _response(False, 500))
    routes = {"persona": "default", "critic": "judge"}
    metrics = usage_metrics(usage, model_for_role=routes.get, prices_per_1k={"default": 2.0, "judge": 10.0})
    # persona: 2000 tokens × ½ reached a model × 2.0/1k = 2.0; critic: 500 × 10/1k = 5.0
    assert metrics["usage.cost"] == pytest.approx(7.0)
    assert metrics["usage.calls"] == 3 and metrics["usage.model_calls"] == 2 and metrics["usage.cached_calls"] == 1
    assert metrics["usage.tokens"] == 2500
    assert metrics["usage.latency_mean_s"] == pytest.approx(0.5)
    assert metrics["usage.critic.model_calls"] == 1


def test_usage_round_trips_through_plain_data_and_merges():
    usage = UsageTracker()
    usage.record("persona", _response(False, 10))
    data = json.loads(json.dumps(usage_to_dict(usage)))
    merged = merge_usage([data, data])
    assert merged.roles["persona"].calls == 2 and merged.roles["persona"].prompt_tokens == 20


def test_disabled_tracker_creates_no_store(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    tracker = Tracker(settings, "exp", enabled=False)
    with tracker.run("pipeline") as run:
        run.log_params({"a": 1})
        run.log_metrics({"m": 1.0})
        run.log_artifacts([tmp_path])
    assert run.run_id is None
    assert not (tmp_path / "data").exists()


def test_parent_and_child_runs_with_scrubbed_params_and_failure_status(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", llm_api_key="sk-very-secret-key-000")
    tracker = Tracker(settings, "exp")
    artifact = tmp_path / "out.txt"
    artifact.write_text("hello")
    with tracker.run("pipeline", tags={"personae.kind": "pipeline"}) as parent:
        parent.log_params({"note": "key sk-very-secret-key-000", **{f"p{i}": i for i in range(150)}})
        with tracker.run("simulate", parent_run_id=parent.run_id) as child:
            child.log_metrics({"conversations": 3, "bad": float("nan"), "text": "x"})
            child.log_artifacts([artifact, tmp_path / "missing.txt"])
        with pytest.raises(RuntimeError):
            with tracker.run("evaluate", parent_run_id=parent.run_id):
                raise RuntimeError("boom")
    runs = pipeline_runs(settings, "exp")
    assert [r.run_id for r in runs] == [parent.run_id]
    assert runs[0].params["note"] == f"key {REDACTED}" and runs[0].params["p149"] == "149"
    children = {c.name: c for c in child_runs(settings, "exp", parent.run_id)}
    assert children["simulate"].status == "FINISHED" and children["simulate"].metrics == {"conversations": 3.0}
    assert children["evaluate"].status == "FAILED"
    listed = [a.path for a in tracker.client().list_artifacts(child.run_id)]
    assert listed == ["out.txt"]
    assert str(settings.mlflow_artifact_root) in tracker.client().get_run(child.run_id).info.artifact_uri


@pytest.mark.slow
def test_personae_run_leaves_a_complete_mlflow_run_and_no_secret(tmp_path, secret_env, prefect_api_session, openai_server):
    """`personae run` with the fake model (+ a judge on the test server keyed by an env var)."""
    exp = fake_experiment(tmp_path, judge_url=openai_server.base_url, n_conversations=3)
    data_dir = tmp_path / "data"
    result = run_cli(["run", str(exp), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "MLflow run" in result.output

    settings = Settings(data_dir=data_dir)
    (parent,) = pipeline_runs(settings, "flows-test")
    assert parent.status == "FINISHED"
    params = parent.params
    assert params["models.judge.api_key_env"] == "PERSONAE_TEST_JUDGE_KEY"
    assert params["model.default"] == "fake:fake-chat" and params["model.judge"] == "openai:judge-model"
    assert params["seed.simulation"] == "7"
    assert any(k.startswith("prompt_version.persona_") for k in params)
    assert params["settings.llm_api_key"] == REDACTED
    assert parent.tags["personae.version"] and parent.tags["personae.kind"] == "pipeline"
    metrics = parent.metrics
    assert metrics["generate.personas"] == 4
    assert metrics["simulate.conversations.complete"] == 3
    assert metrics["usage.calls"] > 0 and metrics["usage.cost"] > 0  # the judge has a price
    assert any(k.startswith("evaluate.eval.transcript.") for k in metrics)

    children = {c.name: c for c in child_runs(settings, "flows-test", parent.run_id)}
    assert set(children) == {"generate", "simulate", "evaluate"}
    tracker = Tracker(settings, "flows-test")
    artifacts = {name: {a.path for a in tracker.client().list_artifacts(c.run_id)} for name, c in children.items()}
    assert "personas.jsonl" in artifacts["generate"]
    assert "conversations.jsonl" in artifacts["simulate"]
    assert {"scorecard.html", "scorecard.json", "plots"} <= artifacts["evaluate"]
    assert {a.path for a in tracker.client().list_artifacts(parent.run_id)} == {exp.name}
    assert openai_server.request_count > 0  # the keyed judge was really called

    # the run folder records its config for `personae export`, scrubbed like the params
    run_config = settings.run_dir("flows-test") / "run_config.json"
    recorded = json.loads(run_config.read_text())
    assert recorded["models"] == {"default": "fake:fake-chat", "judge": "openai:judge-model"}
    assert recorded["seeds"]["simulation"] == 7 and recorded["experiment"]["name"] == "flows-test"
    assert SECRET.encode() not in run_config.read_bytes()

    # exporting the run logs an `export` run pointing at this pipeline run, the dataset folder as its artifact
    exported = run_cli(["export", "flows-test", "--out", str(tmp_path / "dataset"), "--data-dir", str(data_dir)])
    assert exported.exit_code == 0, exported.output
    export_runs = tracker.client().search_runs([tracker.experiment_id()], filter_string="tags.`personae.kind` = 'export'")
    assert [r.data.tags["personae.source_run_id"] for r in export_runs] == [parent.run_id]
    assert "export/README.md" in {a.path for a in tracker.client().list_artifacts(export_runs[0].info.run_id, "export")}

    # no secret anywhere in the tracking store or its artifacts
    for path in [settings.root / "mlflow.db", *settings.mlflow_artifact_root.rglob("*")]:
        if Path(path).is_file():
            assert SECRET.encode() not in Path(path).read_bytes(), path


def test_compare_prints_runs_side_by_side_and_plots(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    tracker = Tracker(settings, "cmp")
    for calls in (10, 30):
        with tracker.run("pipeline", tags={"personae.kind": "pipeline"}) as run:
            run.log_metrics({"usage.calls": calls, "evaluate.eval.transcript.echo": calls / 100, "wall_s": 1.5})
    runner = CliRunner()
    from personae.cli import app

    out = tmp_path / "cmp.png"
    result = runner.invoke(app, ["compare", "cmp", "--data-dir", str(tmp_path / "data"), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert "usage.calls" in result.output and "30" in result.output and "10" in result.output
    assert "evaluate.eval.transcript.echo" in result.output
    assert out.is_file() and out.stat().st_size > 1000
    only = runner.invoke(app, ["compare", "cmp", "--data-dir", str(tmp_path / "data"), "-m", "wall_s"])
    assert "wall_s" in only.output and "usage.calls" not in only.output
    missing = runner.invoke(app, ["compare", "nope", "--data-dir", str(tmp_path / "data")])
    assert missing.exit_code != 0


# ---- runs left RUNNING by killed processes -----------------------------------------------

_OWNER_SCRIPT = """
import sys
from personae.settings import Settings
from personae.tracking import Tracker

tracker = Tracker(Settings(data_dir=sys.argv[1]), "stale")
parent = tracker.start_run("pipeline")
child = tracker.start_run("simulate", parent_run_id=parent.run_id)
print(parent.run_id, child.run_id, flush=True)
sys.stdin.read()  # hold the runs open until told to go
"""


def _start_owner(data_dir: Path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", _OWNER_SCRIPT, str(data_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def test_runs_of_a_killed_process_are_marked_killed_and_live_ones_are_left_alone(tmp_path):
    from personae.processes import ProcessOwner

    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    tracker = Tracker(settings, "stale")
    tracker.experiment_id()  # the store is created once: MLflow's first migration is not safe to race
    killed, live = _start_owner(data_dir), _start_owner(data_dir)
    try:
        killed_ids = killed.stdout.readline().split()
        live_ids = live.stdout.readline().split()
        assert len(killed_ids) == len(live_ids) == 2
        killed.kill()
        killed.wait()

        client = tracker.client()
        here = ProcessOwner.current()
        # a run recorded by a process on another host, and one whose pid is now another process's
        elsewhere = client.create_run(tracker.experiment_id(), run_name="elsewhere",
                                      tags=ProcessOwner("another-host", 1, here.boot_id, here.pid_namespace, "1").tags()).info.run_id
        reused = client.create_run(tracker.experiment_id(), run_name="reused",
                                   tags=ProcessOwner(here.host, here.pid, here.boot_id, here.pid_namespace, "1").tags()).info.run_id
        no_owner = client.create_run(tracker.experiment_id(), run_name="older-version").info.run_id

        with tracker.run("pipeline") as new:
            status = {run_id: client.get_run(run_id).info.status for run_id in [*killed_ids, *live_ids, elsewhere, reused, no_owner, new.run_id]}
        assert [status[i] for i in killed_ids] == ["KILLED", "KILLED"]  # the parent and its child
        assert "had ended" in client.get_run(killed_ids[0]).data.tags["personae.ended_by"]
        if here.started is not None:  # Linux tells a reused pid by the process's start time
            assert status[reused] == "KILLED"
        assert [status[i] for i in live_ids] == ["RUNNING", "RUNNING"]  # another live process's runs
        assert status[elsewhere] == status[no_owner] == status[new.run_id] == "RUNNING"  # cannot tell: left alone
        assert client.get_run(new.run_id).data.tags["personae.owner.pid"] == str(here.pid)

        # the live process's run is not touched by a second tracker either; it ends it itself
        assert Tracker(settings, "stale").end_stale_runs() == []
    finally:
        for process in (killed, live):
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
            process.stdin.close()


def test_process_owner_round_trips_through_tags_and_judges_only_what_it_can_tell():
    from personae.processes import ProcessOwner

    here = ProcessOwner.current()
    assert ProcessOwner.from_tags(here.tags()) == here
    assert ProcessOwner.from_tags({}) is None and ProcessOwner.from_tags({"personae.owner.host": "h", "personae.owner.pid": "x"}) is None
    assert not here.has_ended(here)
    assert not ProcessOwner("another-host", 999_999_999).has_ended(here)
    assert ProcessOwner(here.host, 999_999_999, here.boot_id, here.pid_namespace).has_ended(here)  # no such pid
    other_boot = ProcessOwner(here.host, 999_999_999, "another-boot", here.pid_namespace)
    assert not other_boot.has_ended(here) or here.boot_id is None
