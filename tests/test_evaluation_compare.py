"""Comparing two arms: per-metric differences with Welch t, Mann–Whitney U and Cohen's d."""

from __future__ import annotations

import json

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
    assert row.welch_p < 0.001 and row.mannwhitney_p < 0.01
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
    assert "echo_excess" in text and "Welch p" in text and "<0.001" in text
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
    assert report.row("z").mannwhitney_p == pytest.approx(1.0)
    assert cohens_d([1, 2, 3], [2, 3, 4]) == pytest.approx(1.0)
    json.loads(report.to_json())  # undefined statistics are null, not NaN
    with pytest.raises(KeyError, match="known"):
        report.row("nope")
