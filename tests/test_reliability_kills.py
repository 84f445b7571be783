"""Reliability under SIGKILL: a pipeline killed at any stage and rerun ends with the same outputs.

``personae run`` (generate → simulate → evaluate, tracked in MLflow, on the fake model)
runs once uninterrupted as the reference. Then, per kill point, a fresh run is started in
its own process and SIGKILLed at that point (armed through ``tests/_kill_hook.py``): during
generation; mid-simulation, halfway through appending a finished conversation (a torn
line) while other conversations are mid-way; during the judged evaluation; and while
MLflow logs the conversations artifact. A plain rerun must then end
with the same personas, the same conversations (ids, counts, transcripts), the same
scorecard, no torn or duplicated JSONL lines, and a finished MLflow pipeline run.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from _flows_support import PREFECT_ENV, prefect_api_session, run_cli  # noqa: F401  (session fixture)
from _fork_cli import CliCase, run_cli_cases
from personae.settings import Settings

pytestmark = pytest.mark.timeout(900)  # a guard against a hang: the first test pays for 5 pipeline runs (86 s under a 2-core hog)

NAME = "kills"
N_PERSONAS = 6
N_CONVERSATIONS = 8

# (id, where to kill: see tests/_kill_hook.py)
KILL_POINTS = [
    ("during-generation", "model:validator,crafter:7"),
    ("mid-conversation-torn-append", "append:3"),
    ("during-evaluation", "model:judge_a:3"),
    ("during-mlflow-logging", "artifact:conversations.jsonl"),
]


def _experiment(folder: Path) -> Path:
    data = {
        "name": NAME,
        "seed": 11,
        "models": {"default": {"provider": "fake"}},
        "embeddings": {"provider": "hashing"},
        "population": {"size": N_PERSONAS, "seed": 5, "batch_size": 2, "deep_attributes": 5},
        "scenarios": [{
            "name": "refund",
            "setting": "An online shop's support chat.",
            "roles": [{"name": "client", "goal": "get a refund"}, {"name": "responder", "goal": "help within policy"}],
            "max_turns": 4,
        }],
        "graph": {"kind": "dyad", "termination": {"detector": False}},
        "simulation": {"n_conversations": N_CONVERSATIONS, "concurrency": 3, "max_retries": 0},
        "evaluation": {"judged": {"enabled": True, "tasks": ["persona_consistency", "linguistic_habits"],
                                  "questions_per_task": 1, "environments_per_persona": 1, "max_personas": 2, "concurrency": 1}},
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_in_process(experiment: Path, data_dir: Path) -> None:
    result = run_cli(["run", str(experiment), "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output


def _lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"{path.name} ends in a torn line"
    return [json.loads(line) for line in raw.split(b"\n")[:-1]]  # every line parses on its own


def _outputs(data_dir: Path) -> dict[str, Any]:
    """The final outputs that must not depend on whether (and where) the run was killed."""
    run_dir = Settings(data_dir=data_dir).run_dir(NAME)
    personas = _lines(run_dir / "personas.jsonl")
    conversations = _lines(run_dir / "conversations.jsonl")
    ids = [c["id"] for c in conversations]
    assert len(ids) == len(set(ids)), "a conversation was written twice"
    scorecard = json.loads((run_dir / "scorecard.json").read_text(encoding="utf-8"))
    return {
        "personas": personas,
        "conversations": {
            c["id"]: (c["status"], c["stop_reason"], [(u["speaker"], u["turn"], u["text"]) for u in c["utterances"]])
            for c in conversations
        },
        # the population section reports this run's own model usage and speed; the rest must match
        "scorecard": _without_population(scorecard),
        "population_size": json.loads((run_dir / "population_report.json").read_text(encoding="utf-8")).get("size"),
    }


def _checkpointed(run_dir: Path) -> set[str]:
    """Conversation ids with a LangGraph checkpoint (started, not yet written out)."""
    ids: set[str] = set()
    for db in (run_dir / "checkpoints").glob("*.sqlite"):
        with sqlite3.connect(db) as conn:
            ids |= {row[0] for row in conn.execute("SELECT DISTINCT thread_id FROM checkpoints")}
    return ids


def _without_population(scorecard: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in scorecard.items() if k != "population"}
    out["metrics"] = {k: v for k, v in scorecard.get("metrics", {}).items() if not k.startswith("population.")}
    return _rounded(out)


def _rounded(value: Any) -> Any:
    """Floats to 10 significant digits: conversations finish in any order, so sums differ in the last bit."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _latest_pipeline_run(data_dir: Path) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=Settings(data_dir=data_dir).mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'pipeline'", order_by=["attributes.start_time DESC"])
    return runs[0]


def _run_statuses(data_dir: Path) -> dict[str, int]:
    """How many of the experiment's MLflow runs are in each status."""
    from collections import Counter

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=Settings(data_dir=data_dir).mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(NAME)
    return dict(Counter(r.info.status for r in client.search_runs([experiment.experiment_id])))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prefect_api_session) -> dict[str, Any]:
    """The outputs of one uninterrupted run."""
    folder = tmp_path_factory.mktemp("kills-reference")
    experiment = _experiment(folder)
    _run_in_process(experiment, folder / "data")
    outputs = _outputs(folder / "data")
    assert len(outputs["personas"]) == N_PERSONAS
    assert len(outputs["conversations"]) == N_CONVERSATIONS
    assert {s for s, _, _ in outputs["conversations"].values()} == {"complete"}
    assert outputs["scorecard"].get("judged"), "the reference run must include the judged evaluation"
    run = _latest_pipeline_run(folder / "data")
    assert run.info.status == "FINISHED"
    return {"outputs": outputs, "metrics": run.data.metrics}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, prefect_api_session) -> dict[str, Any]:
    """Every kill point's run, started fresh in its own folder and killed there: id → (folder, outcome)."""
    logs = tmp_path_factory.mktemp("kills-logs")
    cases, folders = [], {}
    for point, spec in KILL_POINTS:
        folder = tmp_path_factory.mktemp(f"killed-{point}")
        experiment = _experiment(folder)
        env = {**PREFECT_ENV, "PREFECT_API_URL": prefect_api_session.api_url,
               "PERSONAE_TEST_KILL": spec, "PERSONAE_TEST_KILL_MARK": str(folder / "killed.txt")}
        cases.append(CliCase(point, ["run", str(experiment), "--data-dir", str(folder / "data")], folder, env, timeout_s=600))  # a hang guard
        folders[point] = folder
    outcomes = run_cli_cases(cases, logs)
    return {point: (folders[point], outcomes[point]) for point, _ in KILL_POINTS}


@pytest.mark.parametrize(("point", "spec"), KILL_POINTS, ids=[p for p, _ in KILL_POINTS])
def test_killed_run_reruns_to_the_same_outputs(prefect_api_session, reference, killed, point, spec):
    folder, outcome = killed[point]
    assert outcome.code == -signal.SIGKILL, f"not killed (exit {outcome.code}): {outcome.stderr[-3000:]}"
    assert (folder / "killed.txt").is_file(), "killed, but not at the armed point"
    data_dir = folder / "data"
    run_dir = Settings(data_dir=data_dir).run_dir(NAME)
    conversations = run_dir / "conversations.jsonl"
    if point == "mid-conversation-torn-append":
        # other conversations were in flight (concurrency 3) and the file ends in half a line
        assert not conversations.read_bytes().endswith(b"\n"), "the kill should leave a torn line"
        written = {json.loads(line)["id"] for line in conversations.read_bytes().split(b"\n")[:-1]}
        assert len(written) < N_CONVERSATIONS
        assert _checkpointed(run_dir) - written, "the kill should leave conversations half done in the checkpoints"
    if point == "during-generation":
        assert not conversations.exists()

    _run_in_process(folder / "experiment.yaml", data_dir)  # the plain rerun

    outputs = _outputs(data_dir)
    expected = reference["outputs"]
    assert [p["id"] for p in outputs["personas"]] == [p["id"] for p in expected["personas"]]
    assert outputs["personas"] == expected["personas"]
    assert sorted(outputs["conversations"]) == sorted(expected["conversations"])
    assert outputs["conversations"] == expected["conversations"]
    assert outputs["scorecard"] == expected["scorecard"]
    assert outputs["population_size"] == expected["population_size"]
    run = _latest_pipeline_run(data_dir)
    assert run.info.status == "FINISHED"
    statuses = _run_statuses(data_dir)
    assert "RUNNING" not in statuses, statuses  # the rerun marked the killed process's runs KILLED
    assert statuses.get("KILLED", 0) >= 2, statuses  # its pipeline run and the stage it was in
    for key in ("generate.personas", "simulate.conversations.complete", "simulate.conversations.failed", "simulate.conversations.total"):
        assert run.data.metrics.get(key) == reference["metrics"].get(key), key
