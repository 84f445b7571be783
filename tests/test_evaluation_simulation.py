"""Ablations on real simulation outputs: simulate_batch arms compared metric by metric."""

from __future__ import annotations

import json
import random

from _evaluation_fixtures import POPULATION

from personae.embeddings import HashingEmbedder
from personae.evaluation import EvaluationConfig, compare_arms, evaluate_run
from personae.graphs.config import GraphConfig
from personae.graphs.runner import latest_conversations, make_jobs, simulate_batch
from personae.llm import Gateway
from personae.llm.base import LLMRequest, ResponseFormat
from personae.llm.testing import FakeLLM, ScriptedLLM, fake_from_schema
from personae.models import Role, Scenario
from personae.nodes.critic import CriticConfig

SCENARIO = Scenario(
    name="Router support",
    setting="A phone call to an internet provider.",
    roles=[Role(name="client", goal="get the router working"), Role(name="responder", goal="solve the problem")],
    max_turns=8,
)


def parrot(request: LLMRequest) -> str:
    """A model that repeats its partner's last turn back (structured calls get schema-valid JSON)."""
    if request.response_format is not ResponseFormat.TEXT:
        return json.dumps(fake_from_schema(request.json_schema, random.Random(0)))
    return "Yes, " + [m for m in request.messages if m.role == "user"][-1].content


async def _arm(tmp_path, name: str, llm, graph: GraphConfig, n: int = 8):
    jobs = make_jobs(POPULATION, [SCENARIO], graph, n_conversations=n, seed=1)
    out = tmp_path / f"{name}.jsonl"
    result = await simulate_batch(jobs, gateway=Gateway(llm), out_path=out, checkpoint_path=None, embedder=HashingEmbedder())
    assert result.completed == n
    return latest_conversations(out)


async def test_ecp_vs_concat_arms_are_compared_with_p_values(tmp_path, hashing_embedder):
    ecp = await _arm(tmp_path, "ecp", FakeLLM(seed=0), GraphConfig(projection="ecp"))
    concat = await _arm(tmp_path, "concat", FakeLLM(seed=0), GraphConfig(projection="concat"))
    report = compare_arms(ecp, concat, embedder=hashing_embedder, personas=POPULATION, label_a="ecp", label_b="concat")
    for metric in ("echo", "echo_excess", "drift_drop", "role_confusion", "adherence_rr", "distinct_2", "n_utterances"):
        row = report.row(metric)
        assert (row.n_a, row.n_b) == (8, 8), metric
        assert row.diff == row.mean_b - row.mean_a
        assert 0.0 <= row.p_adjusted <= 1.0 and row.p_adjusted >= row.welch_p
    assert 0.0 <= report.row("echo").welch_p <= 1.0
    # the simulation's own per-conversation counters (critic, tokens) are compared too
    assert any(r.metric.startswith("recorded.") for r in report.rows)

    scorecard = await evaluate_run(ecp, POPULATION, config=EvaluationConfig(), gateway=None, embedder=hashing_embedder,
                                   out_dir=tmp_path / "eval", comparison=report)
    assert "compare.echo.p_adjusted" in scorecard.metrics()
    assert "ecp vs concat" in (tmp_path / "eval" / "scorecard.html").read_text()


async def test_a_parroting_arm_is_detected_as_echoing(tmp_path, hashing_embedder):
    graph = GraphConfig(critic=CriticConfig(enabled=False))
    normal = await _arm(tmp_path, "fake", FakeLLM(seed=0), graph)
    parrots = await _arm(tmp_path, "parrot", ScriptedLLM(parrot), graph)
    report = compare_arms(normal, parrots, embedder=hashing_embedder, personas=POPULATION, label_a="fake", label_b="parrot")
    copied = report.row("echo_rate")  # the share of turns that copy the partner's
    assert copied.mean_a < 0.1 and copied.mean_b >= 0.7  # every turn after the opening ones
    echo = report.row("echo")  # centred cosine to the partner's recent turns
    assert echo.mean_b > echo.mean_a + 0.3
    assert echo.welch_p < 0.001 and echo.p_adjusted < 0.01 and echo.cohens_d > 2
