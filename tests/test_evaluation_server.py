"""The judged evaluation through the real openai client against the local OpenAI-compatible test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _evaluation_fixtures import GARDENER, MECHANIC, control, echoing

from personae.embeddings.openai import OpenAIEmbedder
from personae.evaluation import TASKS, EvaluationConfig, JudgedConfig, evaluate_judged, evaluate_run
from personae.evaluation.benchmark import load_personas
from personae.evaluation.config import JudgeReliabilityConfig
from personae.llm import Gateway
from personae.testing.pytest_plugin import openai_llm
from personae.testing.server import OpenAITestServer

PERSONAGYM = Path(__file__).parent / "data" / "personagym"


def _scripted(body: dict) -> str | None:
    """Judges reply by model name; everything else gets the server's default reply."""
    fmt = body.get("response_format") or {}
    name = fmt.get("json_schema", {}).get("name") if isinstance(fmt, dict) else None
    if name != "Judgement":
        return None
    score = {"judge-strict": 2, "judge-kind": 4}[body["model"]]
    return json.dumps({"rationale": "per rubric", "score": score, "confidence": 0.8 if score == 4 else 0.5})


async def test_judged_path_over_real_http_with_scripted_judges(hashing_embedder):
    with OpenAITestServer(reply=_scripted) as server:
        gateway = Gateway(
            {
                "default": openai_llm(server),
                "strict": openai_llm(server, model="judge-strict"),
                "kind": openai_llm(server, model="judge-kind"),
            },
            retry_base_delay_s=0.01,
        )
        try:
            config = JudgedConfig(enabled=True, judges=["strict", "kind"], questions_per_task=1)
            report = await evaluate_judged([GARDENER, MECHANIC], config=config, gateway=gateway, embedder=hashing_embedder)
        finally:
            await gateway.aclose()
        bodies = server.requests
    assert report.n_failures == 0 and report.question_failures == 0
    assert report.n_items >= 2 * len(TASKS)
    assert report.persona_score == pytest.approx(3.0)
    assert report.per_task == {t: pytest.approx(3.0) for t in TASKS}
    assert report.per_judge_task["strict"] == {t: 2.0 for t in TASKS}
    assert report.agreement.mean_abs_diff == 2.0 and report.agreement.within_1 == 0.0
    assert report.by_confidence.high_mean == 4.0 and report.by_confidence.low_mean == 2.0
    # judges were asked for a JSON-schema reply; persona answers were plain text with a persona system prompt
    judge_bodies = [b for b in bodies if b["model"] == "judge-strict"]
    assert judge_bodies and all(b["response_format"]["type"] == "json_schema" for b in judge_bodies)
    persona_bodies = [b for b in bodies if b["messages"][0]["role"] == "system" and "You are Rosa Green" in b["messages"][0]["content"]]
    assert len(persona_bodies) == sum(1 for i in report.items if i.persona_id == GARDENER.id)


@pytest.mark.openai_server(fault_rate=0.2, faults=["429", "500", "schema_invalid"], seed=3)
async def test_evaluate_run_over_a_flaky_server(openai_server, tmp_path):
    gateway = Gateway(
        {"default": openai_llm(openai_server), "judge_b": openai_llm(openai_server, model="judge-b")},
        retry_base_delay_s=0.01,
        max_retries=8,
    )
    embedder = OpenAIEmbedder("test-embed", base_url=openai_server.base_url, api_key="test")
    config = EvaluationConfig(judged=JudgedConfig(enabled=True, judges=["judge_a", "judge_b"], questions_per_task=1,
                                                  tasks=["expected_action", "toxicity_control"]))
    try:
        scorecard = await evaluate_run([echoing(), control()], [GARDENER, MECHANIC], config=config, gateway=gateway,
                                       embedder=embedder, out_dir=tmp_path)
    finally:
        await gateway.aclose()
    metrics = scorecard.metrics()
    assert 1.0 <= metrics["judged.persona_score"] <= 5.0
    assert "judged.agreement.mean_abs_diff" in metrics and "transcript.echo" in metrics
    assert sum(openai_server.fault_counts.values()) > 0  # faults happened and were retried or repaired
    assert scorecard.judged.n_items == 2 * 2
    assert (tmp_path / "scorecard.html").exists()


@pytest.mark.openai_server(seed=5)
async def test_judge_report_on_the_test_server(openai_server):
    """The PersonaGym fixture and the judge report over HTTP: the server's judges reply at random, and are flagged."""
    gateway = Gateway(
        {"default": openai_llm(openai_server), "judge_a": openai_llm(openai_server, model="judge-a"), "judge_b": openai_llm(openai_server, model="judge-b")},
        retry_base_delay_s=0.01,
    )
    checks = JudgeReliabilityConfig(calibration_sample=8, speaker_sample=4, order_swap_sample=6)
    config = JudgedConfig(enabled=True, questions=PERSONAGYM / "questions" / "mini", rubrics=PERSONAGYM / "rubrics", questions_per_task=1,
                          reliability=checks)
    try:
        report = await evaluate_judged(load_personas(PERSONAGYM / "code" / "personas.py"), config=config, gateway=gateway, embedder=None)
    finally:
        await gateway.aclose()
    assert report.n_items == 15 and report.agreement is not None and not report.warnings
    assert report.judge_models["judge_a"] == f"openai:judge-a@{openai_server.base_url}"
    for judge in ("judge_a", "judge_b"):
        rel = report.reliability.get(judge)
        assert rel.calibration.asked == 8 and rel.speaker.answers == 4 and rel.order_swap.asked == 6
        assert rel.calls >= 8 + 2 * 4 + 6  # every check's call went through the gateway under the judge's role
        assert gateway.usage.roles[judge].calls - rel.calls == report.n_items  # one call per answer in the run; the rest were the checks
        assert rel.flags, f"a judge replying at random passed every check: {rel}"
