"""Transcript metrics on constructed transcripts with known answers (HashingEmbedder)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _evaluation_fixtures import (
    BAKER,
    ENGINE_LINES,
    GARDEN_LINES,
    GARDENER,
    MECHANIC,
    POPULATION,
    SAILOR,
    control,
    conversation,
    drifting,
    echoing,
    in_character,
    monopolised,
    swapped,
)

from personae.evaluation import EvaluationConfig, evaluate_transcripts, transcript_metrics
from personae.evaluation.agreement import judge_agreement, krippendorff_alpha_interval
from personae.evaluation.text import distinct_n, gini
from personae.models import ConversationStatus, StopReason


def _one(conv, embedder, **kw):
    report = transcript_metrics([conv], embedder=embedder, personas=POPULATION, **kw)
    return report, report.per_conversation[0]


def test_echoing_transcript_scores_higher_echo_than_control(hashing_embedder):
    _, echo = _one(echoing(), hashing_embedder)
    _, ctrl = _one(control(), hashing_embedder)
    assert echo.values["echo"] > ctrl.values["echo"] + 0.2
    assert echo.values["echo_excess"] > 0.2
    assert echo.values["echo_excess"] > ctrl.values["echo_excess"] + 0.2
    # the baseline is the partner's *other* turns: it stays low in both
    assert echo.values["echo_baseline"] < echo.values["echo"]


def test_drifting_speaker_shows_drift(hashing_embedder):
    _, conv = _one(drifting(), hashing_embedder)
    by = {s.persona_id: s for s in conv.speakers}
    gardener, mechanic = by[GARDENER.id], by[MECHANIC.id]
    assert gardener.drift_slope < 0
    assert gardener.drift_drop > 0.1
    assert gardener.drift_drop > mechanic.drift_drop + 0.1
    _, steady = _one(in_character(), hashing_embedder)
    assert conv.values["drift_drop"] > steady.values["drift_drop"]


def test_drift_curve_falls_for_a_drifting_speaker(hashing_embedder):
    report = transcript_metrics([drifting()], embedder=hashing_embedder, personas=POPULATION)
    curve = report.drift_curve
    assert len(curve) == 5 and all(v is not None for v in curve)
    assert curve[0] > curve[-1]


def test_swapped_speakers_show_attribution_confusion(hashing_embedder):
    _, normal = _one(in_character(), hashing_embedder)
    _, swap = _one(swapped(), hashing_embedder)
    assert normal.values["attribution_accuracy"] == 1.0
    assert normal.values["attribution_confusion"] == 0.0
    assert swap.values["attribution_confusion"] >= 0.8
    # authorship by the speakers' other turns still works when the swap is consistent...
    assert swap.values["authorship_accuracy"] >= 0.8
    # ...but not when speakers switch voices half way through
    turns = [(GARDENER, GARDEN_LINES[i]) if i < 3 else (GARDENER, ENGINE_LINES[i]) for i in range(6)]
    turns = [t for i, g in enumerate(turns) for t in (g, (MECHANIC, ENGINE_LINES[i] if i < 3 else GARDEN_LINES[i]))]
    _, half = _one(conversation("conv-half", turns), hashing_embedder)
    assert 0.3 <= half.values["attribution_confusion"] <= 0.7
    assert half.values["authorship_accuracy"] < normal.values["authorship_accuracy"]


def test_monopolising_speaker_has_top_share_and_gini(hashing_embedder):
    _, mono = _one(monopolised(), hashing_embedder)
    _, balanced = _one(in_character(), hashing_embedder)
    top = max(mono.speakers, key=lambda s: s.word_share)
    assert top.persona_id == MECHANIC.id
    assert mono.values["top_share"] == top.word_share > 0.9
    assert mono.values["turn_top_share"] == 0.5  # same number of turns, very different words
    assert mono.values["gini"] > balanced.values["gini"] + 0.3
    assert balanced.values["top_share"] < 0.65


def test_adherence_ranks_true_persona_first_when_utterances_copy_its_facts(hashing_embedder):
    report, conv = _one(in_character(), hashing_embedder)
    assert {s.persona_id: s.adherence_rank for s in conv.speakers} == {GARDENER.id: 1, MECHANIC.id: 1}
    assert report.adherence.mrr == 1.0 and report.adherence.hit_1 == 1.0
    assert report.adherence.n_candidates == len(POPULATION)
    assert conv.values["adherence_rr"] == 1.0
    # swapped speakers are each retrieved as the other persona: rank 2 or worse
    report, swap = _one(swapped(), hashing_embedder)
    assert all(s.adherence_rank >= 2 for s in swap.speakers)
    assert report.adherence.mrr <= 0.5


def test_text_statistics_and_stop_reasons(hashing_embedder):
    rep = conversation("conv-rep", [(BAKER, "a a a a"), (SAILOR, "b c"), (BAKER, "a a a a"), (SAILOR, "")], stop=StopReason.REPETITION)
    failed = conversation("conv-failed", [(BAKER, "bread")], stop=StopReason.ERROR, status=ConversationStatus.FAILED)
    report = transcript_metrics([rep, in_character(), failed], embedder=hashing_embedder)
    assert report.n_conversations == 3 and report.n_measured == 2
    assert report.stop_reasons == {"error": 1, "max_turns": 1, "repetition": 1}
    assert report.statuses == {"complete": 2, "failed": 1}
    v = report.per_conversation[0].values
    assert v["n_utterances"] == 4 and v["n_speakers"] == 2
    assert v["words_total"] == 10 and v["words_mean"] == 2.5
    assert v["empty_rate"] == 0.25
    assert v["exact_repetition_rate"] == 0.25
    assert v["distinct_1"] == pytest.approx(3 / 10)
    assert v["distinct_2"] == pytest.approx(2 / 7)  # bigrams aa ×6 and bc ×1, never across utterances
    metrics = report.metrics()
    assert metrics["transcript.stop_reason.repetition"] == 1.0
    assert metrics["transcript.status.failed"] == 1.0
    assert all(math.isfinite(x) for x in metrics.values())


def test_sync_and_async_agree(hashing_embedder):
    convs = [echoing(), control(), drifting(), monopolised()]
    sync = transcript_metrics(convs, embedder=hashing_embedder, personas=POPULATION)

    import asyncio

    async_ = asyncio.run(evaluate_transcripts(convs, embedder=hashing_embedder, personas=POPULATION))
    assert sync.aggregate == async_.aggregate
    assert sync.adherence == async_.adherence


def test_echo_window_config(hashing_embedder):
    wide = transcript_metrics([echoing()], embedder=hashing_embedder, config=EvaluationConfig(echo_window=3))
    narrow = transcript_metrics([echoing()], embedder=hashing_embedder)
    assert narrow.aggregate["echo"] > wide.aggregate["echo"]


def test_helpers_known_values():
    assert gini([1, 1, 1, 1]) == 0.0
    assert gini([0, 1]) == pytest.approx(0.5)
    assert gini([0, 0, 0, 1]) == pytest.approx(0.75)
    assert math.isnan(gini([]))
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)


def test_krippendorff_alpha_matches_brute_force():
    rng = np.random.default_rng(0)
    matrix = rng.integers(1, 6, size=(3, 20)).astype(float)
    matrix[0, 3] = np.nan
    matrix[1, 7] = np.nan
    matrix[:, 0] += 0  # noqa
    # brute force on pairable values
    cols = [c[~np.isnan(c)] for c in matrix.T]
    cols = [c for c in cols if c.size >= 2]
    values = np.concatenate(cols)
    n = values.size
    d_o = sum(((c[:, None] - c[None, :]) ** 2).sum() / (c.size - 1) for c in cols) / n
    d_e = ((values[:, None] - values[None, :]) ** 2).sum() / (n * (n - 1))
    assert krippendorff_alpha_interval(matrix) == pytest.approx(1 - d_o / d_e)
    perfect = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], dtype=float)
    assert krippendorff_alpha_interval(perfect) == pytest.approx(1.0)


def test_judge_agreement_known_values():
    rep = judge_agreement({"a": [4, 4, 4, None], "b": [2, 3, 4, 5]})
    assert rep.n_items == 3
    assert rep.mean_abs_diff == pytest.approx(1.0)
    assert rep.exact == pytest.approx(1 / 3)
    assert rep.within_1 == pytest.approx(2 / 3)
    assert rep.per_judge_mean == {"a": 4.0, "b": 3.5}
    assert rep.krippendorff_alpha is not None and rep.krippendorff_alpha < 0.5


def test_nothing_to_measure(hashing_embedder):
    report = transcript_metrics([], embedder=hashing_embedder)
    assert report.n_conversations == 0 and report.adherence.mrr is None and report.aggregate == {}
