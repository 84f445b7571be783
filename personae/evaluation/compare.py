"""Comparing two runs or two arms (e.g. ECP vs concat, critic on vs off), SPASM-style.

Per metric: the means, the difference (b − a), Welch's t-test, the Mann–Whitney U
test, Cohen's d and n per arm, on per-conversation samples.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence

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
]

# Counts are not compared: they describe the arm, not the conversations' quality.
_SKIP = {"n_speakers"}


class MetricComparison(BaseModel):
    """One metric across two arms; ``diff`` is mean_b − mean_a."""

    metric: str
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    diff: float | None
    welch_t: float | None
    welch_p: float | None
    mannwhitney_u: float | None
    mannwhitney_p: float | None
    cohens_d: float | None


class ComparisonReport(BaseModel):
    """Per-metric differences between arm ``a`` and arm ``b`` with tests and effect sizes."""

    label_a: str = "a"
    label_b: str = "b"
    rows: list[MetricComparison] = Field(default_factory=list)

    def row(self, metric: str) -> MetricComparison:
        """The comparison of ``metric``; ``KeyError`` names the known metrics."""
        for r in self.rows:
            if r.metric == metric:
                return r
        raise KeyError(f"no metric {metric!r}; known: {[r.metric for r in self.rows]}")

    def significant(self, alpha: float = 0.05) -> list[MetricComparison]:
        """Rows where either test rejects equality at ``alpha``."""
        return [r for r in self.rows if any(p is not None and p < alpha for p in (r.welch_p, r.mannwhitney_p))]

    def table(self, *, metrics: Sequence[str] | None = None) -> Table:
        """A rich table of the comparison (optionally only ``metrics``)."""
        table = Table(title=f"{self.label_a} vs {self.label_b}  (diff = {self.label_b} − {self.label_a})")
        width = max((len(r.metric) for r in self.rows), default=6)
        table.add_column("metric", no_wrap=True, min_width=width)
        for name, justify in ((f"mean {self.label_a}", "right"), (f"mean {self.label_b}", "right"), ("diff", "right"),
                             ("Welch p", "right"), ("M–W p", "right"), ("Cohen's d", "right"), ("n", "right")):
            table.add_column(name, justify=justify)
        wanted = set(metrics) if metrics is not None else None
        significant = {r.metric for r in self.significant()}
        for r in self.rows:
            if wanted is not None and r.metric not in wanted:
                continue
            style = "bold" if r.metric in significant else None
            table.add_row(r.metric, _fmt(r.mean_a), _fmt(r.mean_b), _fmt(r.diff, signed=True), _fmt_p(r.welch_p), _fmt_p(r.mannwhitney_p),
                          _fmt(r.cohens_d, signed=True), f"{r.n_a}/{r.n_b}", style=style)
        return table

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as JSON (undefined statistics are ``null``)."""
        return json.dumps(self.model_dump(mode="json"), indent=indent)

    def metrics(self, prefix: str = "compare") -> dict[str, float]:
        """Flat, finite figures for tracking: diff, p-values and d per metric."""
        out: dict[str, float] = {}
        for r in self.rows:
            for field in ("diff", "welch_p", "mannwhitney_p", "cohens_d"):
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


def _compare_one(metric: str, a: Sequence[float], b: Sequence[float]) -> MetricComparison:
    a = [float(x) for x in a if x is not None and math.isfinite(x)]
    b = [float(x) for x in b if x is not None and math.isfinite(x)]
    mean_a = float(np.mean(a)) if a else None
    mean_b = float(np.mean(b)) if b else None
    t = p_t = u = p_u = None
    if len(a) >= 2 and len(b) >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            if np.var(a) == 0 and np.var(b) == 0:
                # two constants: equal ones do not differ; for differing ones t is undefined
                t, p_t = (0.0, 1.0) if mean_a == mean_b else (None, None)
            else:
                res = stats.ttest_ind(a, b, equal_var=False)
                t, p_t = _finite(res.statistic), _finite(res.pvalue)
            mw = stats.mannwhitneyu(a, b, alternative="two-sided")
            u, p_u = _finite(mw.statistic), _finite(mw.pvalue)
    return MetricComparison(
        metric=metric,
        n_a=len(a),
        n_b=len(b),
        mean_a=mean_a,
        mean_b=mean_b,
        diff=None if mean_a is None or mean_b is None else mean_b - mean_a,
        welch_t=t,
        welch_p=p_t,
        mannwhitney_u=u,
        mannwhitney_p=p_u,
        cohens_d=cohens_d(a, b),
    )


def compare_samples(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    *,
    label_a: str = "a",
    label_b: str = "b",
) -> ComparisonReport:
    """Compare per-metric samples of two arms (metrics present in both)."""
    names = [m for m in a if m in b]
    return ComparisonReport(label_a=label_a, label_b=label_b, rows=[_compare_one(m, a[m], b[m]) for m in names])


def compare_reports(a: TranscriptReport, b: TranscriptReport, *, label_a: str = "a", label_b: str = "b") -> ComparisonReport:
    """Compare two transcript reports on their per-conversation values."""
    names = [m for m in a.metric_names() if m in set(b.metric_names()) and m not in _SKIP]
    return compare_samples({m: a.samples(m) for m in names}, {m: b.samples(m) for m in names}, label_a=label_a, label_b=label_b)


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
