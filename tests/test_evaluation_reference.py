"""Human-likeness against a reference corpus (issue 14, item 5).

The reference used here is the shipped ``personae/data/reference/dialogues.jsonl``:
30 dialogues hand-written by the developers, NOT collected human data. It stands in
for a human corpus to check that the measure ranks degenerate runs below human-like text.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from personae.errors import ConfigError
from personae.evaluation import EvaluationConfig, evaluate_run
from personae.evaluation.text import words
from personae.evaluation.reference import FEATURES, flesch_reading_ease, human_likeness, load_reference, syllables
from personae.evaluation.validation import reference_dialogues
from personae.experiment import check_inputs, load_experiment
from personae.jsonl import write_jsonl
from personae.models import Conversation, ConversationStatus, Utterance

REFERENCE_FILE = "reference.jsonl"


def _halves(convs: list[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    ordered = sorted(convs, key=lambda c: c.id)
    return ordered[0::2], ordered[1::2]


def echo_loop(conv: Conversation) -> Conversation:
    """A degenerate run: after the opening, every turn repeats the partner's previous turn."""
    turns = sorted(conv.utterances, key=lambda u: u.turn)
    texts = [turns[0].text]
    for _ in turns[1:]:
        texts.append(texts[-1])
    utterances = [Utterance(speaker=u.speaker, turn=u.turn, text=t) for u, t in zip(turns, texts)]
    return conv.model_copy(update={"id": f"{conv.id}-echo", "utterances": utterances})


def uniform(conv: Conversation, length: int) -> Conversation:
    """Every turn cut or padded (with the conversation's own words) to exactly ``length`` words."""
    pool = words(" ".join(u.text for u in conv.utterances))
    utterances = []
    for u in sorted(conv.utterances, key=lambda u: u.turn):
        tokens = (words(u.text) + pool[u.turn * 7 :] + pool)[:length]
        text = " ".join(tokens) + ("?" if "?" in u.text else ".")
        utterances.append(Utterance(speaker=u.speaker, turn=u.turn, text=text))
    return conv.model_copy(update={"id": f"{conv.id}-uniform", "utterances": utterances})


def wild(conv: Conversation) -> Conversation:
    """Turn lengths swinging between 1 and 58 words, around the same mean."""
    pool = words(" ".join(u.text for u in conv.utterances))
    utterances = []
    for u in sorted(conv.utterances, key=lambda u: u.turn):
        n = 58 if u.turn % 3 == 0 else 1
        utterances.append(Utterance(speaker=u.speaker, turn=u.turn, text=" ".join((pool * 3)[u.turn : u.turn + n])))
    return conv.model_copy(update={"id": f"{conv.id}-wild", "utterances": utterances})


def _feature(report, name):
    return next(f for f in report.features if f.name == name)


def test_the_human_fixture_scores_above_an_echo_loop():
    human = reference_dialogues()
    a, b = _halves(human)
    human_vs_human = human_likeness(a, b)
    echo_vs_human = human_likeness([echo_loop(c) for c in human], human)
    assert human_vs_human.n_simulated == 15 and human_vs_human.n_reference == 15
    assert human_vs_human.score > 0.7
    assert echo_vs_human.score < human_vs_human.score - 0.2
    assert echo_vs_human.human_split_score == pytest.approx(human_vs_human.score)  # the same halves
    assert _feature(echo_vs_human, "distinct_2").direction == "lower"  # the loop repeats itself
    assert _feature(echo_vs_human, "response_length_ratio").direction == "too uniform"  # every reply as long as its turn
    assert {f.name for f in echo_vs_human.features} == {spec.name for spec in FEATURES}
    assert all(0.0 <= f.similarity <= 1.0 for f in echo_vs_human.features)


def test_a_too_uniform_corpus_is_penalised_although_its_mean_matches():
    human = reference_dialogues()
    a, b = _halves(human)
    mean_length = round(_feature(human_likeness(a, b), "turn_length").human_mean)
    flat = human_likeness([uniform(c, mean_length) for c in a], b)
    natural = human_likeness(a, b)
    length = _feature(flat, "turn_length")
    assert length.simulated_std == 0.0
    assert abs(length.simulated_mean - length.human_mean) < 0.1 * length.human_std  # the mean matches
    assert length.direction == "too uniform"
    assert length.distance > 0.5 > _feature(natural, "turn_length").distance
    assert flat.score < natural.score


def test_a_too_varied_corpus_is_penalised_too():
    human = reference_dialogues()
    a, b = _halves(human)
    length = _feature(human_likeness([wild(c) for c in a], b), "turn_length")
    assert length.direction == "too varied"
    assert length.distance > 2 * _feature(human_likeness(a, b), "turn_length").distance


def test_reference_metrics_are_flat_and_finite():
    human = reference_dialogues()
    report = human_likeness([echo_loop(c) for c in human[:5]], human, label="fixture")
    metrics = report.metrics()
    assert metrics["reference.score"] == pytest.approx(report.score)
    assert "reference.turn_length.distance" in metrics and "reference.hedge_rate.human_mean" in metrics
    assert report.provenance == ["hand-written reference dialogue (not collected human data)"]


def test_readability_and_syllables_by_heuristic():
    assert [syllables(w) for w in ("cat", "make", "table", "banana", "rhythm")] == [1, 1, 2, 3, 1]
    easy = flesch_reading_ease("The cat sat on the mat. It was warm.")
    hard = flesch_reading_ease("Institutional considerations necessitate comprehensive organisational restructuring.")
    assert easy > 90 > 0 > hard
    assert flesch_reading_ease("...") is None


def test_failed_and_one_turn_conversations_do_not_count():
    human = reference_dialogues()
    failed = human[0].model_copy(update={"id": "f", "status": ConversationStatus.FAILED})
    short = human[1].model_copy(update={"id": "s", "utterances": human[1].utterances[:1]})
    assert human_likeness([failed, short, human[2]], human).n_simulated == 1
    assert human_likeness([failed], human).score is None


# ---- bad reference files ----------------------------------------------------------


def test_bad_reference_files_are_config_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"empty\.jsonl: the reference file has no conversations"):
        load_reference(empty)
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"name": "Rosa", "age": 40}\n')
    with pytest.raises(ConfigError, match=r"personas\.jsonl:1: invalid Conversation record"):
        load_reference(personas)
    text = tmp_path / "notes.jsonl"
    text.write_text("hello, this is not JSON\n")
    with pytest.raises(ConfigError, match=r"notes\.jsonl:1: invalid JSON"):
        load_reference(text)
    failed = tmp_path / "failed.jsonl"
    write_jsonl(failed, [c.model_copy(update={"status": ConversationStatus.FAILED}) for c in reference_dialogues()[:3]])
    with pytest.raises(ConfigError, match=r"failed\.jsonl: the reference file has no complete conversations") as info:
        load_reference(failed)
    assert "failed" in str(info.value.got)
    with pytest.raises(ConfigError, match=r"missing\.jsonl: file not found"):
        load_reference(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="is a directory"):
        load_reference(tmp_path)


async def test_evaluate_run_fails_on_a_bad_reference_before_writing_anything(tmp_path, hashing_embedder):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty.jsonl"):
        await evaluate_run(reference_dialogues()[:2], [], config=EvaluationConfig(reference=empty), gateway=None,
                           embedder=hashing_embedder, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- wiring: scorecard, CLI, experiment --------------------------------------------


async def test_scorecard_has_a_human_reference_section_and_metrics(tmp_path, hashing_embedder):
    human = reference_dialogues()
    reference = tmp_path / REFERENCE_FILE
    write_jsonl(reference, human)
    scorecard = await evaluate_run([echo_loop(c) for c in human[:6]], [], config=EvaluationConfig(reference=reference, plots=False),
                                   gateway=None, embedder=hashing_embedder, out_dir=tmp_path / "out")
    metrics = scorecard.metrics()
    assert metrics["reference.score"] == pytest.approx(scorecard.reference.score) and metrics["reference.score"] < 0.6
    assert ("human-likeness (vs reference)", scorecard.reference.score) in scorecard.headline()
    data = json.loads((tmp_path / "out" / "scorecard.json").read_text())
    assert data["reference"]["reference"] == REFERENCE_FILE and data["metrics"]["reference.score"] == pytest.approx(metrics["reference.score"])
    html = (tmp_path / "out" / "scorecard.html").read_text()
    assert "<h2>Human reference</h2>" in html and "hand-written by its developers, not collected human data" in html
    assert "too uniform" in html and "distinct_2" in html


def test_cli_evaluate_with_a_reference(tmp_path, cli_env):
    human = reference_dialogues()
    run, reference = tmp_path / "run.jsonl", tmp_path / REFERENCE_FILE
    write_jsonl(run, [echo_loop(c) for c in human[:4]])
    write_jsonl(reference, human)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli_env, ["evaluate", str(run), "--reference", str(reference), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "human-likeness" in result.output
    assert "reference.score" in json.loads((out / "scorecard.json").read_text())["metrics"]

    bad = tmp_path / "bad-reference.jsonl"
    bad.write_text('{"id": "x"}\n')
    result = CliRunner().invoke(cli_env, ["evaluate", str(run), "--reference", str(bad), "--out", str(tmp_path / "o2")])
    assert isinstance(result.exception, ConfigError) and "bad-reference.jsonl:1" in str(result.exception)
    assert not (tmp_path / "o2").exists()


def test_experiment_reference_is_relative_to_the_experiment_file_and_checked(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / REFERENCE_FILE, reference_dialogues()[:2])
    (tmp_path / "personas.jsonl").write_text('{"name": "Ana"}\n')
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "name: ref\ngraph: {kind: dyad}\npersonas_file: personas.jsonl\n"
        "scenarios:\n  - name: chat\n    setting: a bus stop\n    roles: [{name: a}, {name: b}]\n"
        f"evaluation:\n  reference: data/{REFERENCE_FILE}\n"
    )
    loaded = load_experiment(experiment)
    assert loaded.evaluation.reference == tmp_path / "data" / REFERENCE_FILE
    check_inputs(loaded)
    (tmp_path / "data" / REFERENCE_FILE).write_text("")
    with pytest.raises(ConfigError, match=REFERENCE_FILE):
        check_inputs(loaded)
