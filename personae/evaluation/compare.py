"""Comparing two runs or two arms (e.g. ECP vs concat, critic on vs off), with statistics a reader can trust.

The test is chosen before the data, one per metric: **Welch's t-test on cluster
means**. A cluster is the persona in a conversation's first seat (``make_jobs`` gives
every persona the first seat in turn), since conversations that share a persona are
not independent samples; when every cluster holds one conversation this is Welch's
t-test on conversations. Across the metrics of one comparison, p-values are adjusted
for multiple testing (Holm–Bonferroni by default, which bounds the family-wise error
rate; Benjamini–Hochberg on request, which bounds the false discovery rate), and only
the adjusted p decides "significant". Each difference gets a 95 % confidence interval
from a cluster bootstrap (clusters resampled within each arm), Cohen's d, and a
sample-size hint: about how many conversations per arm would detect d = 0.3 with 80 %
power at the family's corrected level, given the clustering observed.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from rich.table import Table
from scipy import stats

from personae.embeddings.base import Embedder
from personae.evaluation.config import EvaluationConfig
from personae.evaluation.transcript import TranscriptReport, evaluate_transcripts, population_for, transcript_metrics
from personae.models import Conversation, Persona

__all__ = [
    "MetricComparison",
    "ComparisonReport",
    "compare_samples",
    "compare_reports",
    "compare_arms",
    "acompare_arms",
    "cohens_d",
    "holm",
    "benjamini_hochberg",
    "conversations_needed",
    "TEST_NAME",
]

TEST_NAME = "Welch t-test on cluster means (cluster = first-seat persona; conversations when an arm has one persona)"
"""The one test every metric gets, fixed before any data is seen."""

# Counts are not compared: they describe the arm, not the conversations' quality.
_SKIP = {"n_speakers"}
_BOOTSTRAP = 2000
_TARGET_D = 0.3
_POWER = 0.8

Sample = Sequence[float] | Sequence[tuple[str, float]]


class MetricComparison(BaseModel):
    """One metric across two arms; ``diff`` is mean_b − mean_a."""

    metric: str
    n_a: int
    n_b: int
    clusters_a: int = 0
    clusters_b: int = 0
    unit: Literal["cluster", "conversation"] = Field("cluster", description="what the test counted as independent samples")
    mean_a: float | None
    mean_b: float | None
    diff: float | None
    ci_low: float | None = Field(None, description="95 % cluster-bootstrap interval of diff, lower end")
    ci_high: float | None = None
    welch_t: float | None
    welch_p: float | None = Field(None, description="p of the pre-specified test, unadjusted")
    p_adjusted: float | None = Field(None, description="p after the correction across this comparison's metrics")
    significant: bool = False
    cohens_d: float | None
    icc: float | None = Field(None, description="intra-cluster correlation used for the sample-size hint")
    n_needed: int | None = Field(None, description="conversations per arm to detect |d| = 0.3 at 80 % power, corrected level")


class ComparisonReport(BaseModel):
    """Per-metric differences between arm ``a`` and arm ``b`` with one pre-specified test, corrected across metrics."""

    label_a: str = "a"
    label_b: str = "b"
    test: str = TEST_NAME
    correction: Literal["holm", "bh"] = "holm"
    alpha: float = 0.05
    rows: list[MetricComparison] = Field(default_factory=list)

    def row(self, metric: str) -> MetricComparison:
        """The comparison of ``metric``; ``KeyError`` names the known metrics."""
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no metric {metric!r}; known: {[r.metric for r in self.rows]}")

    def significant(self, alpha: float | None = None) -> list[MetricComparison]:
        """Rows whose *adjusted* p is below ``alpha`` (default: the report's)."""
        level = self.alpha if alpha is None else alpha
        return [r for r in self.rows if r.p_adjusted is not None and r.p_adjusted < level]

    def sample_size_hint(self) -> str:
        """One line: the largest per-metric need, as a plan for the next run."""
        needs = [r.n_needed for r in self.rows if r.n_needed is not None]
        if not needs:
            return "too little data for a sample-size hint"
        return (f"about {max(needs)} conversations per arm detect d = {_TARGET_D} with {_POWER:.0%} power on every metric "
                f"(median metric: {int(np.median(needs))}), at α = {self.alpha} corrected for {len(self.rows)} metrics")

    def table(self, *, metrics: Sequence[str] | None = None) -> Table:
        """A rich table of the comparison (optionally only ``metrics``)."""
        name = "Holm" if self.correction == "holm" else "BH"
        table = Table(title=f"{self.label_a} vs {self.label_b}  (diff = {self.label_b} − {self.label_a}); {self.test}, {name}-adjusted",
                      caption=self.sample_size_hint())
        width = max((len(r.metric) for r in self.rows), default=6)
        table.add_column("metric", no_wrap=True, min_width=width)
        for column in (f"mean {self.label_a}", f"mean {self.label_b}", "diff", "95% CI", "p", f"p ({name})", "Cohen's d", "n (clusters)"):
            table.add_column(column, justify="right")
        wanted = set(metrics) if metrics is not None else None
        for r in self.rows:
            if wanted is not None and r.metric not in wanted:
                continue
            ci = f"[{_fmt(r.ci_low, signed=True)}, {_fmt(r.ci_high, signed=True)}]" if r.ci_low is not None else "–"
            table.add_row(r.metric, _fmt(r.mean_a), _fmt(r.mean_b), _fmt(r.diff, signed=True), ci, _fmt_p(r.welch_p), _fmt_p(r.p_adjusted),
                          _fmt(r.cohens_d, signed=True), f"{r.n_a}/{r.n_b} ({r.clusters_a}/{r.clusters_b})",
                          style="bold" if r.significant else None)
        return table

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON (undefined statistics are ``null``)."""
        return json.dumps(self.model_dump(mode="json"), indent=indent)

    def metrics(self, prefix: str = "compare") -> dict[str, float]:
        """Flat, finite figures for tracking: diff, interval, p (raw and adjusted) and d per metric."""
        out: dict[str, float] = {}
        for r in self.rows:
            for field in ("diff", "ci_low", "ci_high", "welch_p", "p_adjusted", "cohens_d"):
                value = getattr(r, field)
                if value is not None and math.isfinite(value):
                    out[f"{prefix}.{r.metric}.{field}"] = float(value)
        return out


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float | None:
    """(mean_b − mean_a) / pooled standard deviation; ``None`` when undefined."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    diff = float(np.mean(b) - np.mean(a))
    if pooled == 0:
        return 0.0 if diff == 0 else None
    return diff / pooled


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (``None`` stays ``None`` and does not count)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(known)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini–Hochberg adjusted p-values (``None`` stays ``None`` and does not count)."""
    known = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(known)
    out: list[float | None] = [None] * len(pvalues)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        p, i = known[rank]
        running = min(running, p * m / (rank + 1))
        out[i] = min(1.0, running)
    return out


def conversations_needed(*, alpha: float, icc: float, mean_cluster_size: float, d: float = _TARGET_D, power: float = _POWER) -> int:
    """Conversations per arm for a two-sided test to detect effect ``d`` with ``power`` at ``alpha``,
    inflated by the design effect 1 + (m − 1)·ICC of clusters of mean size m."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    design_effect = 1.0 + max(0.0, mean_cluster_size - 1.0) * max(0.0, icc)
    return int(math.ceil(2.0 * z * z / (d * d) * design_effect))


def _split(sample: Sample) -> tuple[list[str], list[float]]:
    """(cluster labels, values) of a sample given as values (each its own cluster) or (cluster, value) pairs."""
    labels: list[str] = []
    values: list[float] = []
    for i, item in enumerate(sample):
        cluster, value = item if isinstance(item, tuple) else (f"#{i}", item)
        if value is not None and math.isfinite(value):
            labels.append(str(cluster))
            values.append(float(value))
    return labels, values


def _cluster_means(labels: list[str], values: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    groups: dict[str, list[float]] = {}
    for label, value in zip(labels, values):
        groups.setdefault(label, []).append(value)
    members = [np.asarray(v) for v in groups.values()]
    return np.asarray([m.mean() for m in members]), members


def _icc(groups: list[np.ndarray]) -> float | None:
    """One-way ANOVA estimate of the intra-cluster correlation (clipped at 0)."""
    sizes = np.asarray([len(g) for g in groups], dtype=float)
    n, k = sizes.sum(), len(groups)
    if k < 2 or n <= k:
        return None
    grand = np.concatenate(groups).mean()
    msb = sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (k - 1)
    msw = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
    m0 = (n - (sizes**2).sum() / n) / (k - 1)
    if msb + (m0 - 1) * msw <= 0:
        return 0.0
    return float(max(0.0, (msb - msw) / (msb + (m0 - 1) * msw)))


def _bootstrap_ci(groups_a: list[np.ndarray], groups_b: list[np.ndarray], rng: np.random.Generator) -> tuple[float | None, float | None]:
    """95 % percentile interval of mean_b − mean_a, resampling whole clusters within each arm."""
    if len(groups_a) < 2 or len(groups_b) < 2:
        return None, None

    def draws(groups: list[np.ndarray]) -> np.ndarray:
        sums = np.asarray([g.sum() for g in groups])
        counts = np.asarray([len(g) for g in groups], dtype=float)
        picks = rng.integers(0, len(groups), size=(_BOOTSTRAP, len(groups)))
        return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)

    diffs = draws(groups_b) - draws(groups_a)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def _compare_one(metric: str, a: Sample, b: Sample, rng: np.random.Generator) -> MetricComparison:
    labels_a, values_a = _split(a)
    labels_b, values_b = _split(b)
    mean_a = float(np.mean(values_a)) if values_a else None
    mean_b = float(np.mean(values_b)) if values_b else None
    means_a, groups_a = _cluster_means(labels_a, values_a)
    means_b, groups_b = _cluster_means(labels_b, values_b)
    unit = "cluster"
    if len(means_a) < 2 or len(means_b) < 2:  # one persona per arm: nothing to generalise over but the conversations
        unit = "conversation"
        means_a, groups_a = np.asarray(values_a), [np.asarray([v]) for v in values_a]
        means_b, groups_b = np.asarray(values_b), [np.asarray([v]) for v in values_b]
    t = p_t = None
    if len(means_a) >= 2 and len(means_b) >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if np.var(means_a) == 0 and np.var(means_b) == 0:
                # two constants: equal ones do not differ; for differing ones t is undefined
                t, p_t = (0.0, 1.0) if means_a[0] == means_b[0] else (None, None)
            else:
                res = stats.ttest_ind(means_a, means_b, equal_var=False)
                t, p_t = _finite(res.statistic), _finite(res.pvalue)
    ci_low, ci_high = _bootstrap_ci(groups_a, groups_b, rng)
    icc = _icc(groups_a + groups_b)
    return MetricComparison(
        metric=metric,
        n_a=len(values_a),
        n_b=len(values_b),
        clusters_a=len(set(labels_a)),
        clusters_b=len(set(labels_b)),
        unit=unit,
        mean_a=mean_a,
        mean_b=mean_b,
        diff=None if mean_a is None or mean_b is None else mean_b - mean_a,
        ci_low=ci_low,
        ci_high=ci_high,
        welch_t=t,
        welch_p=p_t,
        cohens_d=cohens_d(values_a, values_b),
        icc=icc,
    )


def compare_samples(
    a: Mapping[str, Sample],
    b: Mapping[str, Sample],
    *,
    label_a: str = "a",
    label_b: str = "b",
    alpha: float = 0.05,
    correction: Literal["holm", "bh"] = "holm",
    seed: int = 0,
) -> ComparisonReport:
    """Compare per-metric samples of two arms (metrics present in both).

    A sample is a list of per-conversation values, or of ``(cluster, value)`` pairs when
    conversations share personas. One pre-specified test per metric (:data:`TEST_NAME`),
    adjusted across the metrics (``correction``); the bootstrap is seeded.
    """
    names = [m for m in a if m in b]
    rng = np.random.default_rng(seed)
    rows = [_compare_one(m, a[m], b[m], rng) for m in names]
    adjusted = (holm if correction == "holm" else benjamini_hochberg)([r.welch_p for r in rows])
    corrected_alpha = alpha / max(1, len(rows))
    for row, p in zip(rows, adjusted):
        row.p_adjusted = p
        row.significant = p is not None and p < alpha
        clusters = row.clusters_a + row.clusters_b
        if clusters >= 2:
            row.n_needed = conversations_needed(alpha=corrected_alpha, icc=row.icc or 0.0, mean_cluster_size=(row.n_a + row.n_b) / clusters)
    return ComparisonReport(label_a=label_a, label_b=label_b, alpha=alpha, correction=correction, rows=rows)


def compare_reports(
    a: TranscriptReport, b: TranscriptReport, *, label_a: str = "a", label_b: str = "b", alpha: float = 0.05, correction: Literal["holm", "bh"] = "holm",
) -> ComparisonReport:
    """Compare two transcript reports on their per-conversation values, clustered by first-seat persona."""
    names = [m for m in a.metric_names() if m in set(b.metric_names()) and m not in _SKIP]
    return compare_samples({m: a.clustered_samples(m) for m in names}, {m: b.clustered_samples(m) for m in names},
                           label_a=label_a, label_b=label_b, alpha=alpha, correction=correction)


def compare_arms(
    a: Sequence[Conversation],
    b: Sequence[Conversation],
    *,
    embedder: Embedder,
    personas: Sequence[Persona] | None = None,
    config: EvaluationConfig | None = None,
    label_a: str = "a",
    label_b: str = "b",
) -> ComparisonReport:
    """Transcript metrics of two arms, compared metric by metric.

    Adherence ranks among one shared population (``personas`` ∪ both arms'
    participants) so the two arms are measured against the same candidates.
    """
    population = population_for([*a, *b], personas)
    ra = transcript_metrics(a, embedder=embedder, personas=population, config=config)
    rb = transcript_metrics(b, embedder=embedder, personas=population, config=config)
    return compare_reports(ra, rb, label_a=label_a, label_b=label_b)


async def acompare_arms(
    a: Sequence[Conversation],
    b: Sequence[Conversation],
    *,
    embedder: Embedder,
    personas: Sequence[Persona] | None = None,
    config: EvaluationConfig | None = None,
    label_a: str = "a",
    label_b: str = "b",
) -> ComparisonReport:
    """:func:`compare_arms` for async code (embeds with ``aembed``)."""
    population = population_for([*a, *b], personas)
    ra = await evaluate_transcripts(a, embedder=embedder, personas=population, config=config)
    rb = await evaluate_transcripts(b, embedder=embedder, personas=population, config=config)
    return compare_reports(ra, rb, label_a=label_a, label_b=label_b)


def _finite(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _fmt_p(value: float | None) -> str:
    if value is None:
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"
