"""Comparing two arms: one pre-specified test per metric, corrected across metrics, cluster-bootstrap intervals."""

from __future__ import annotations

import json
import math

import numpy as np

import pytest
from _evaluation_fixtures import POPULATION, control, echoing
from rich.console import Console

from personae.evaluation import acompare_arms, compare_arms, compare_samples
from personae.evaluation.compare import cohens_d


def _arms():
    echo_arm = [echoing(f"echo-{i}", offset=i, n=3 + i % 4) for i in range(8)]
    control_arm = [control(f"ctrl-{i}", offset=i, n=3 + i % 4) for i in range(8)]
    return echo_arm, control_arm


def test_arm_that_echoes_more_is_detected(hashing_embedder):
    echo_arm, control_arm = _arms()
    report = compare_arms(echo_arm, control_arm, embedder=hashing_embedder, personas=POPULATION, label_a="echo", label_b="control")
    row = report.row("echo_excess")
    assert (row.n_a, row.n_b) == (8, 8)
    assert row.mean_a > row.mean_b and row.diff == pytest.approx(row.mean_b - row.mean_a)
    assert row.welch_p < 0.001 and row.p_adjusted <= min(1.0, row.welch_p * len(report.rows)) and row.significant
    assert row.ci_low < row.diff < row.ci_high < 0  # the interval excludes no difference
    assert row.cohens_d < -2
    assert report.row("echo").welch_p < 0.001
    assert "echo_excess" in {r.metric for r in report.significant()}
    # both arms are equally long: no difference there
    length = report.row("n_utterances")
    assert length.diff == 0 and length.welch_p > 0.5
    # outputs: JSON, a rich table, flat metrics
    data = json.loads(report.to_json())
    assert data["label_a"] == "echo" and any(r["metric"] == "echo_excess" for r in data["rows"])
    console = Console(record=True, width=160)
    console.print(report.table())
    text = console.export_text()
    assert "echo_excess" in text and "p (Holm)" in text and "<0.001" in text and "conversations per arm" in text
    assert report.metrics()["compare.echo_excess.welch_p"] < 0.001


async def test_async_comparison_matches_sync(hashing_embedder):
    echo_arm, control_arm = _arms()
    sync = compare_arms(echo_arm, control_arm, embedder=hashing_embedder)
    async_ = await acompare_arms(echo_arm, control_arm, embedder=hashing_embedder)
    assert sync.model_dump() == async_.model_dump()


def test_statistics_edge_cases():
    report = compare_samples({"x": [1.0, 1.0, 1.0], "y": [1.0], "z": [0.1, 0.2, 0.3]},
                             {"x": [1.0, 1.0, 1.0], "y": [2.0, 3.0], "z": [0.1, 0.2, 0.3]})
    same = report.row("x")
    assert same.diff == 0 and same.welch_p == 1.0 and same.cohens_d == 0.0
    tiny = report.row("y")
    assert tiny.welch_p is None and tiny.cohens_d is None and tiny.n_a == 1
    assert report.row("z").welch_p == pytest.approx(1.0) and report.row("z").p_adjusted == pytest.approx(1.0)
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    json.loads(report.to_json())  # undefined statistics are null, not NaN
    with pytest.raises(KeyError, match="known"):
        report.row("nope")


def _null_arm(rng, n_personas: int = 8, per_persona: int = 5, icc: float = 0.5):
    """One arm's per-conversation values: persona effects shared by its conversations, no arm effect."""
    persona = rng.normal(0.0, math.sqrt(icc), n_personas)
    return [(f"persona-{i}", float(persona[i] + rng.normal(0.0, math.sqrt(1 - icc)))) for i in range(n_personas) for _ in range(per_persona)]


def test_two_arms_without_a_difference_stay_within_alpha_family_wise_over_20_metrics_and_200_seeds():
    from scipy import stats

    alpha, seeds, n_metrics = 0.05, 200, 20
    family_errors = naive_errors = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        a = {f"m{k}": _null_arm(rng) for k in range(n_metrics)}
        b = {f"m{k}": _null_arm(rng) for k in range(n_metrics)}
        report = compare_samples(a, b, alpha=alpha, seed=seed)
        family_errors += bool(report.significant())
        # what the comparison did before: conversations as independent samples, either of two tests, no correction
        naive_errors += any(
            min(stats.ttest_ind([v for _, v in a[m]], [v for _, v in b[m]], equal_var=False).pvalue,
                stats.mannwhitneyu([v for _, v in a[m]], [v for _, v in b[m]]).pvalue) < alpha
            for m in a
        )
    assert family_errors / seeds <= alpha
    assert naive_errors / seeds > 0.5  # the old way called a "difference" in most comparisons of identical arms


def test_a_real_difference_survives_the_correction_and_the_hint_sizes_the_next_run():
    rng = np.random.default_rng(1)
    a = {f"m{k}": _null_arm(rng) for k in range(20)}
    b = {f"m{k}": _null_arm(rng) for k in range(20)}
    b["m0"] = [(c, v + 3.0) for c, v in b["m0"]]
    report = compare_samples(a, b)
    assert [r.metric for r in report.significant()] == ["m0"]
    row = report.row("m0")
    assert row.unit == "cluster" and (row.clusters_a, row.clusters_b) == (8, 8) and (row.n_a, row.n_b) == (40, 40)
    assert row.ci_low > 0 and row.icc is not None
    # clustering inflates the need: more conversations than the ~2·(z+z)²/d² ≈ 175 of independent samples
    assert all(r.n_needed > 175 for r in report.rows if r.icc and r.icc > 0.1)
    assert "conversations per arm" in report.sample_size_hint()


def test_holm_and_benjamini_hochberg_adjust_as_published():
    from personae.evaluation.compare import benjamini_hochberg, holm

    p = [0.01, 0.04, 0.03, None, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, None, 0.02])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, None, 0.02])
