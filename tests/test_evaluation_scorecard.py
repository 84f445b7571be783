"""evaluate_run writes the scorecard (JSON + self-contained HTML + plots); the CLI works standalone."""

from __future__ import annotations

import base64
import json

import pytest
from _evaluation_fixtures import GARDENER, MECHANIC, POPULATION, control, drifting, echoing, in_character, monopolised
from typer.testing import CliRunner

from personae.errors import ConfigError
from personae.evaluation import EvaluationConfig, JudgedConfig, compare_arms, evaluate_run, population_metrics
from personae.jsonl import write_jsonl
from personae.llm import Gateway
from personae.llm.testing import FakeLLM


def _conversations():
    return [echoing(), control(), drifting(), in_character(), monopolised()]


async def test_evaluate_run_writes_scorecard_with_all_metrics(tmp_path, hashing_embedder):
    # two judge models (a second fake), so that there is an inter-judge agreement to report
    gateway = Gateway({"default": FakeLLM(seed=0), "judge:b": FakeLLM(seed=1, model="fake-b")})
    config = EvaluationConfig(judged=JudgedConfig(enabled=True, questions_per_task=1, judges=["judge_a", "judge:b"]))
    comparison = compare_arms([echoing(f"e{i}", n=3 + i) for i in range(3)], [control(f"c{i}", n=3 + i) for i in range(3)], embedder=hashing_embedder)
    scorecard = await evaluate_run(
        _conversations(),
        POPULATION,
        config=config,
        gateway=gateway,
        embedder=hashing_embedder,
        out_dir=tmp_path / "eval",
        population_report={"metrics": {"coverage": 0.8, "uniqueness": 0.95}, "size": 5},
        comparison=comparison,
    )
    metrics = scorecard.metrics()
    for key in ("transcript.echo_excess", "transcript.drift_drop", "transcript.role_confusion", "transcript.adherence.mrr",
                "transcript.top_share", "transcript.distinct_2", "judged.persona_score", "judged.agreement.mean_abs_diff",
                "judged.task.toxicity_control", "population.coverage", "compare.echo_excess.welch_p"):
        assert key in metrics, key
    assert all(isinstance(v, float) for v in metrics.values())
    assert "judged.judge.judge_b.expected_action" in metrics  # judge "judge:b", made a tracking-safe key
    assert "judged.reliability.judge_a.flagged" in metrics and "judged.reliability.judge_b.calibration_within_1" in metrics
    assert metrics["n_conversations"] == 5.0 and metrics["n_personas"] == 5.0
    assert "population.size" not in metrics  # only the report's metrics mapping is taken when it has one

    out = tmp_path / "eval"
    data = json.loads((out / "scorecard.json").read_text())
    assert data["metrics"]["judged.persona_score"] == pytest.approx(metrics["judged.persona_score"])
    assert "per_conversation" not in data["transcript"] and "items" not in data["judged"]
    assert len((out / "conversation_metrics.jsonl").read_text().splitlines()) == 5
    assert len((out / "judged_items.jsonl").read_text().splitlines()) == 5 * 5

    html = (out / "scorecard.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "PersonaScore" in html
    assert f"{metrics['judged.persona_score']:.3f}" in html
    assert f"{metrics['transcript.echo_excess']:.3f}" in html
    assert "Krippendorff" in html and "Rosa Green" in html and "coverage" in html
    assert "Judge reliability" in html and "fake:fake-b" in html and "A judge is flagged when" in html
    assert "built-in method" not in html  # a row key named like a dict method ("items") once rendered as the method
    assert html.count("data:image/png;base64,") >= 4
    png = html.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (out / "plots").iterdir()} >= {"drift.png", "echo.png", "speaker_share.png", "judged_tasks.png", "comparison.png"}
    assert "eval_rubric_toxicity_control" in scorecard.prompt_versions


async def test_html_escapes_persona_text(tmp_path, hashing_embedder):
    evil = GARDENER.model_copy(update={"id": "", "name": "<script>alert(1)</script>"})
    conv = in_character()
    scorecard = await evaluate_run([conv], [evil, MECHANIC], gateway=None, embedder=hashing_embedder, out_dir=tmp_path)
    html = (tmp_path / "scorecard.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert scorecard.judged is None and "judged.persona_score" not in scorecard.metrics()


async def test_judged_without_gateway_is_a_config_error(tmp_path, hashing_embedder):
    config = EvaluationConfig(judged=JudgedConfig(enabled=True))
    with pytest.raises(ConfigError, match="gateway"):
        await evaluate_run([in_character()], [], config=config, gateway=None, embedder=hashing_embedder, out_dir=tmp_path)


def test_population_metrics_flattens_numbers():
    assert population_metrics({"size": 10, "marginals": {"age": {"tv": 0.1}}, "name": "x", "ok": True}) == {
        "size": 10.0, "marginals.age.tv": 0.1, "ok": 1.0}
    assert population_metrics(None) == {}


# ---- the CLI ------------------------------------------------------------------------


def test_cli_evaluate_standalone(tmp_path, cli_env):
    convs = tmp_path / "conversations.jsonl"
    other = tmp_path / "other.jsonl"
    personas = tmp_path / "personas.jsonl"
    write_jsonl(convs, [echoing(f"e{i}", offset=i) for i in range(4)])
    write_jsonl(other, [control(f"c{i}", offset=i) for i in range(4)])
    write_jsonl(personas, POPULATION)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_env, ["evaluate", str(convs), "--personas", str(personas), "--out", str(out), "--judged",
                                          "--compare", str(other)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "echo rate" in result.output and "PersonaScore" in result.output and "echo_excess" in result.output
    data = json.loads((out / "scorecard.json").read_text())
    assert data["metrics"]["transcript.n_conversations"] == 4.0
    assert "judged.persona_score" in data["metrics"] and "compare.echo_excess.diff" in data["metrics"]
    assert (out / "scorecard.html").exists()


def test_cli_evaluate_counts_the_latest_record_of_a_retried_conversation(tmp_path, cli_env):
    # a run with retry_failed appends a retried failure again: the file holds its stale failed record first
    from personae.models import ConversationStatus, StopReason

    retried = control("conv-retried")
    failed = retried.model_copy(update={"status": ConversationStatus.FAILED, "stop_reason": StopReason.ERROR,
                                        "error": "ModelCallError: HTTP 500", "utterances": retried.utterances[:1]})
    convs = tmp_path / "conversations.jsonl"
    write_jsonl(convs, [failed, retried])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_env, ["evaluate", str(convs), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "scorecard.json").read_text())["metrics"]
    assert metrics["n_conversations"] == 1.0
    assert metrics["transcript.n_measured"] == 1.0
    assert metrics["transcript.status.complete"] == 1.0 and "transcript.status.failed" not in metrics


def test_cli_bad_files_are_config_errors(tmp_path, cli_env):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    result = CliRunner().invoke(cli_env, ["evaluate", str(bad), "--out", str(tmp_path / "o")])
    assert isinstance(result.exception, ConfigError)
    assert "bad.jsonl:1" in str(result.exception)
    result = CliRunner().invoke(cli_env, ["evaluate", str(tmp_path / "missing.jsonl")])
    assert isinstance(result.exception, ConfigError) and "not found" in str(result.exception)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = CliRunner().invoke(cli_env, ["evaluate", str(empty)])
    assert isinstance(result.exception, ConfigError) and "no conversations" in str(result.exception)
