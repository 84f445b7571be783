"""``personae export``: a real small run (simulated on the fake model, evaluated) exported as a dataset
folder; read back with pyarrow and ``datasets`` offline; checksums, card, scans, redaction, exclusion,
MLflow artifact, errors, and nothing half-written."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: nothing may download
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow.parquet as pq
import pytest
import yaml

from _flows_support import PERSONAS, fake_experiment, run_cli
from personae.errors import ConfigError
from personae.export import ExportOptions, export_run, find_pii, luhn_valid, redact, resolve_run
from personae.models import Conversation

PLANTED = {
    "email": "ana.ruiz@example.org",
    "phone": "+44 20 7946 0958",
    "url": "https://shop.example.com/r/42",
    "card": "4111 1111 1111 1111",
    "credential": "sk-abcdefghijklmnopqrstuvwx1234",
}
PLANTED_LINES = [
    f"Mail me at {PLANTED['email']} or ring {PLANTED['phone']} tonight.",
    f"The receipt is at {PLANTED['url']}, and my card is {PLANTED['card']}.",
    f"Log in with the key {PLANTED['credential']} and check the order.",
    "As an AI language model, I cannot feel anything about kettles.",
]
# Clean text with near misses: a 16-digit number failing Luhn, a year, a price, a range of years, a time, "AI" as a topic.
CLEAN_LINES = [
    "In 2024 I paid $1,299.99 for the kettle, and 7,000 euros for the car.",
    "My order number is 4111111111111112, or 1234 5678 9012 3456 on the receipt.",
    "I worked there from 1990-2000, usually at 10:30 on weekdays.",
    "AI is changing my work as a nurse, and I emailed support about it.",
]
QUESTIONS = ["How often do you buy a kettle?", "What do you value in a shop?"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


async def _simulate(run_dir: Path, tmp: Path) -> None:
    """A dyad batch and an interview batch on the fake model into one run folder, then the evaluation."""
    from personae.embeddings import HashingEmbedder
    from personae.evaluation import EvaluationConfig, evaluate_run
    from personae.experiment import load_experiment
    from personae.graphs import GraphConfig, make_jobs, simulate_batch
    from personae.graphs.runner import latest_conversations
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM
    from personae.models import Persona, Role, Scenario

    exp = load_experiment(fake_experiment(tmp, name="export-test", generate=False))
    personas = [Persona.model_validate(p) for p in PERSONAS]
    (run_dir / "personas.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in personas))
    gateway = Gateway(FakeLLM(seed=1))
    out = run_dir / "conversations.jsonl"
    jobs = make_jobs(personas, exp.scenarios, exp.graph, n_conversations=4, seed=exp.seed)
    survey = Scenario(name="survey", setting="A short shopping survey.", roles=[Role(name="interviewer"), Role(name="respondent")], max_turns=6)
    jobs += make_jobs(personas, [survey], GraphConfig(kind="interview", questions=QUESTIONS), n_conversations=2, seed=exp.seed)
    await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None)
    embedder = HashingEmbedder(dim=64)
    await evaluate_run(latest_conversations(out), personas, config=EvaluationConfig(), gateway=None, embedder=embedder, out_dir=run_dir)


def _plant(run_dir: Path) -> dict[str, str]:
    """Rewrite three dyads (the latest record per id wins): one with PII and an AI-identity line, one
    copying its system prompt, one clean with near misses; and record a fourth as failed."""
    from personae.graphs.runner import latest_conversations
    from personae.jsonl import append_jsonl
    from personae.nodes.projection import render_system_prompt

    dyads = [c for c in latest_conversations(run_dir / "conversations.jsonl") if c.metadata.get("graph") == "dyad"]
    pii, leak, clean, failed = dyads[:4]
    for conversation, lines in ((pii, PLANTED_LINES), (clean, CLEAN_LINES)):
        for utterance, line in zip(conversation.utterances, lines):
            utterance.text = line
    speaker = leak.participant(leak.utterances[1].speaker)
    prompt_words = render_system_prompt(speaker, leak.scenario, leak.participants).split()
    leak.utterances[1].text = "Well. " + " ".join(prompt_words[:30])
    failed.status, failed.error = failed.status.FAILED, "ModelCallError: the endpoint went away"
    append_jsonl(run_dir / "conversations.jsonl", [pii, leak, clean, failed])
    return {"pii": pii.id, "leak": leak.id, "clean": clean.id, "failed": failed.id}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real small run folder: 4 dyads and 2 interviews simulated and evaluated, then planted."""
    from personae.flows.context import RunPaths, write_run_config
    from personae.experiment import load_experiment
    from personae.settings import Settings

    tmp = tmp_path_factory.mktemp("export-run")
    data_dir = tmp / "data"
    settings = Settings(data_dir=data_dir, llm_provider="fake")
    run_dir = settings.run_dir("export-test")
    run_dir.mkdir(parents=True)
    asyncio.run(_simulate(run_dir, tmp))
    write_run_config(load_experiment(tmp / "export-test.yaml"), settings, RunPaths(run_dir))
    ids = _plant(run_dir)
    return {"dir": run_dir, "data_dir": data_dir, "ids": ids}


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "plain"
    result = export_run(run["dir"], out)
    return result, out, json.loads((out / "scan_report.json").read_text())


def _latest(run_dir: Path) -> list[Conversation]:
    from personae.graphs.runner import latest_conversations

    return latest_conversations(run_dir / "conversations.jsonl")


# ---- the folder -----------------------------------------------------------------------------
def test_tables_read_back_with_pyarrow_and_match_the_jsonl_and_the_run(run, exported):
    result, out, _ = exported
    conversations = _latest(run["dir"])
    expected = {
        "conversations": len(conversations),
        "utterances": sum(len(c.utterances) for c in conversations),
        "personas": len(PERSONAS) + 1,  # the population and the interviews' default interviewer
        "survey_answers": sum(len(c.metadata.get("qa") or []) for c in conversations),
    }
    assert expected["survey_answers"] == 2 * len(QUESTIONS)
    assert result.counts == expected
    for table, n in expected.items():
        parquet = pq.read_table(out / "data" / f"{table}.parquet")
        jsonl = _rows(out / "data" / f"{table}.jsonl")
        assert parquet.num_rows == len(jsonl) == n, table
        assert parquet.to_pylist() == jsonl, table
    utterances = pq.read_table(out / "data" / "utterances.parquet").to_pylist()
    conversation_ids = {c["id"] for c in _rows(out / "data" / "conversations.jsonl")}
    persona_ids = {p["id"] for p in _rows(out / "data" / "personas.jsonl")}
    assert {u["conversation_id"] for u in utterances} <= conversation_ids
    assert {u["persona_id"] for u in utterances} <= persona_ids


def test_tables_load_offline_with_datasets_load_dataset(exported, tmp_path):
    import datasets

    _, out, _ = exported
    assert datasets.config.HF_DATASETS_OFFLINE
    for table in ("personas", "conversations", "utterances", "survey_answers"):
        loaded = datasets.load_dataset("parquet", data_files={"train": str(out / "data" / f"{table}.parquet")},
                                       cache_dir=str(tmp_path / "hf-cache"))["train"]
        assert loaded.num_rows == len(_rows(out / "data" / f"{table}.jsonl")), table
    utterances = datasets.load_dataset("parquet", data_files=str(out / "data" / "utterances.parquet"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert {"conversation_id", "speaker", "text", "flags"} <= set(utterances.column_names)


def test_sha256sums_cover_every_file_and_verify(exported):
    _, out, _ = exported
    listed = {}
    for line in (out / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == files
    assert all(_sha256(out / name) == digest for name, digest in listed.items())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temp folder was left behind"


def test_dataset_card_front_matter_records_config_seeds_models_prompts_counts_and_evaluation(exported):
    result, out, _ = exported
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert {c["config_name"] for c in front["configs"]} == {"personas", "conversations", "utterances", "survey_answers"}
    for config in front["configs"]:
        assert all((out / f["path"]).is_file() for f in config["data_files"])
    meta = front["personae"]
    assert meta["counts"] == result.counts
    generation = meta["generation"]
    assert generation["source"] == "run_config.json"
    assert generation["experiment"]["name"] == "export-test"
    assert generation["seeds"]["simulation"] == 7
    assert generation["models"] == {"default": "fake:fake-chat"}
    assert len(generation["prompt_versions"]) > 10 and all(len(v) == 12 for v in generation["prompt_versions"].values())
    assert set(meta["scans"]) == {"pii", "ai_identity", "prompt_leak", "critic", "metric"}
    assert meta["evaluation"]["n_conversations"] == result.counts["conversations"]
    assert "transcript" in meta["evaluation"]
    assert "## Scans" in text and "## Evaluation" in text


# ---- scans ------------------------------------------------------------------------------------
def test_scans_find_every_planted_string_and_nothing_in_clean_text(run, exported):
    _, _, report = exported
    ids = run["ids"]
    pii = [f for f in report["findings"] if f["scan"] == "pii"]
    assert {f["kind"] for f in pii if f["conversation_id"] == ids["pii"]} == set(PLANTED)
    assert any(f["scan"] == "ai_identity" and f["conversation_id"] == ids["pii"] for f in report["findings"])
    assert any(f["scan"] == "prompt_leak" and f["conversation_id"] == ids["leak"] for f in report["findings"])
    text_scans = ("pii", "ai_identity", "prompt_leak")
    assert not [f for f in report["findings"] if f["conversation_id"] == ids["clean"] and f["scan"] in text_scans], "a false alarm on clean text"
    assert any(f["scan"] == "metric" and f["kind"] == "failed" and f["conversation_id"] == ids["failed"] for f in report["findings"])
    # the fake model's own lines raise no PII or identity alarm anywhere else
    assert {f["conversation_id"] for f in report["findings"] if f["scan"] in ("pii", "ai_identity")} == {ids["pii"]}


def test_critic_and_metric_scans_report_what_the_run_recorded(run, exported):
    _, _, report = exported
    conversations = _latest(run["dir"])
    gave_up = {u.id for c in conversations for u in c.utterances if (u.metadata.get("critic") or {}).get("verdict") == "gave_up"}
    assert {f["record_id"] for f in report["findings"] if f["scan"] == "critic"} == gave_up
    metrics = {row["conversation_id"]: row["values"] for row in _rows(run["dir"] / "conversation_metrics.jsonl")}
    over = {cid for cid, values in metrics.items() if (values.get("echo_rate") or 0) >= 0.5}
    assert over == {f["conversation_id"] for f in report["findings"] if f["kind"] == "echo_rate"}
    assert report["counts"]["critic"].get("gave_up", 0) == len(gave_up)


def test_scan_report_and_card_never_repeat_what_the_pii_scan_found(exported):
    _, out, _ = exported
    for name in ("scan_report.json", "README.md"):
        text = (out / name).read_text()
        assert not [v for v in PLANTED.values() if v in text], name


@pytest.mark.parametrize("text, kinds", [
    ("write to bob.smith+shop@mail.example.co.uk", ["email"]),
    ("call (555) 123-4567 or 020 7946 0958", ["phone", "phone"]),
    ("see www.example.org/help.", ["url"]),
    ("card 5500-0000-0000-0004 expires soon", ["card"]),
    ("token ghp_" + "a1" * 18 + " and password: hunter22x", ["credential", "credential"]),
    ("In 2024 I paid $1,299.99; order 4111111111111112; 1990-2000; at 10:30; 3.11.2", []),
    ("1234 5678 9012 3456 is my loyalty number", []),
])
def test_pii_detector_cases(text, kinds):
    assert [m.kind for m in find_pii(text)] == kinds


def test_luhn():
    assert luhn_valid("4111111111111111") and luhn_valid("79927398713")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567890123456")


# ---- options ------------------------------------------------------------------------------------
def test_redact_masks_what_the_pii_scan_found(run, tmp_path):
    result = export_run(run["dir"], tmp_path / "redacted", ExportOptions(redact=True))
    out = result.out
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [v for v in PLANTED.values() if v.encode() in data], path
    texts = [u["text"] for u in _rows(out / "data" / "utterances.jsonl") if u["conversation_id"] == run["ids"]["pii"]]
    joined = " ".join(texts)
    for kind in PLANTED:
        assert f"[{kind.upper()}]" in joined
    assert redact(PLANTED_LINES[0]) == "Mail me at [EMAIL] or ring [PHONE] tonight."
    clean = [u["text"] for u in _rows(out / "data" / "utterances.jsonl") if u["conversation_id"] == run["ids"]["clean"]]
    assert clean[: len(CLEAN_LINES)] == CLEAN_LINES  # near misses are left alone
    assert yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["personae"]["redacted"] is True


def test_exclude_failed_and_flagged_drops_and_counts(run, exported, tmp_path):
    _, _, report = exported
    conversations = _latest(run["dir"])
    flagged = {f["conversation_id"] for f in report["findings"] if f["conversation_id"] and f["kind"] != "failed"}
    failed = {c.id for c in conversations if c.status.value == "failed"}
    assert failed == {run["ids"]["failed"]} and {run["ids"]["pii"], run["ids"]["leak"]} <= flagged
    result = export_run(run["dir"], tmp_path / "excluded", ExportOptions(exclude=["failed", "flagged"]))
    kept = [c for c in conversations if c.id not in failed | flagged]
    dropped = result.excluded["dropped"]
    assert dropped["conversations_by_rule"] == {"failed": 1, "flagged": len(flagged - failed)}
    assert dropped["conversations"] == len(conversations) - len(kept)
    assert result.counts["conversations"] == len(kept)
    assert result.counts["utterances"] == sum(len(c.utterances) for c in kept)
    assert dropped["utterances"] == sum(len(c.utterances) for c in conversations) - result.counts["utterances"]
    exported_ids = {c["id"] for c in _rows(result.out / "data" / "conversations.jsonl")}
    assert exported_ids == {c.id for c in kept}
    card = yaml.safe_load((result.out / "README.md").read_text().split("---\n")[1])["personae"]
    assert card["excluded"]["dropped"]["conversations"] == dropped["conversations"]


# ---- errors and atomicity -------------------------------------------------------------------------
def test_bad_run_names_what_was_expected(run, tmp_path):
    with pytest.raises(ConfigError) as info:
        resolve_run("no-such-experiment", run["data_dir"] / "runs")
    message = str(info.value)
    assert "no-such-experiment" in message and "run's output folder" in message and "export-test" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="holds no run outputs"):
        resolve_run(str(empty), run["data_dir"] / "runs")
    assert resolve_run("export-test", run["data_dir"] / "runs") == run["dir"]
    assert resolve_run(str(run["dir"]), tmp_path) == run["dir"]


def test_existing_destination_is_refused_without_force(run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_run(run["dir"], out)
    assert (out / "keep.txt").read_text() == "mine"
    export_run(run["dir"], out, ExportOptions(force=True))
    assert (out / "SHA256SUMS").is_file() and not (out / "keep.txt").exists()


def test_a_failure_while_writing_leaves_nothing_behind(run, tmp_path, monkeypatch):
    import personae.export.dataset as dataset

    calls = []

    def failing(folder, name, rows):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(folder, name, rows)

    original = dataset.write_table
    monkeypatch.setattr(dataset, "write_table", failing)
    parent = tmp_path / "exports"
    parent.mkdir()
    with pytest.raises(OSError, match="disk full"):
        export_run(run["dir"], parent / "broken")
    assert list(parent.iterdir()) == []
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        export_run(run["dir"], parent / "new" / "deeper" / "broken")
    assert list(parent.iterdir()) == [], "folders created for the export were left behind"


# ---- CLI and MLflow ---------------------------------------------------------------------------------
def test_cli_exports_by_experiment_name_and_logs_the_folder_to_mlflow(run, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from personae.settings import Settings

    monkeypatch.setenv("PERSONAE_LLM_PROVIDER", "fake")
    out = tmp_path / "cli-export"
    result = run_cli(["export", "export-test", "--out", str(out), "--data-dir", str(run["data_dir"]), "--redact", "--exclude", "failed,flagged"])
    assert result.exit_code == 0, result.output
    assert "dropped" in result.output and "MLflow run" in result.output
    settings = Settings(data_dir=run["data_dir"])
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("export-test")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`personae.kind` = 'export'")
    assert len(runs) == 1
    logged = runs[0]
    assert logged.data.params["export.redact"] == "True" and logged.data.params["export.exclude"] == "failed,flagged"
    assert logged.data.metrics["export.dropped.conversations"] >= 3
    top = {a.path for a in client.list_artifacts(logged.info.run_id, "export")}
    assert {"export/README.md", "export/SHA256SUMS", "export/scan_report.json", "export/data"} <= top
    data = {a.path for a in client.list_artifacts(logged.info.run_id, "export/data")}
    assert "export/data/utterances.parquet" in data


def test_cli_help_and_bad_input():
    helped = run_cli(["export", "--help"])
    assert helped.exit_code == 0
    for words in ("RUN", "--out", "--redact", "--exclude", "failed,flagged", "SHA256SUMS"):
        assert words in helped.output
    with pytest.raises(ConfigError, match="--exclude"):
        run_cli(["export", "x", "--out", "y", "--exclude", "broken"])


def test_a_flagged_persona_is_dropped_with_its_conversations(run, tmp_path):
    import shutil

    copy = tmp_path / "run-copy"
    shutil.copytree(run["dir"], copy)
    lines = (copy / "personas.jsonl").read_text().splitlines()
    ana = json.loads(lines[0])
    ana["description"] += f" Reach her at {PLANTED['email']}."
    (copy / "personas.jsonl").write_text("\n".join([json.dumps(ana), *lines[1:]]) + "\n")
    result = export_run(copy, tmp_path / "out", ExportOptions(exclude=["flagged"]))
    report = json.loads((result.out / "scan_report.json").read_text())
    assert any(f["table"] == "personas" and f["record_id"] == ana["id"] and f["field"] == "description" for f in report["findings"])
    assert ana["id"] not in {p["id"] for p in _rows(result.out / "data" / "personas.jsonl")}
    assert result.excluded["dropped"]["personas"] == 1
    kept = _rows(result.out / "data" / "conversations.jsonl")
    assert all(ana["id"] not in c["persona_ids"] for c in kept)
    assert {u["persona_id"] for u in _rows(result.out / "data" / "utterances.jsonl")} <= {p["id"] for p in _rows(result.out / "data" / "personas.jsonl")}
