"""The population report: quotas (target vs achieved), validity, revisions, rejects, coverage,
uniqueness and lexical diversity, plus a plot of target vs achieved marginals.

:class:`ReportBuilder` accumulates persona by persona (a run may stream 100k
personas without holding them), then :meth:`ReportBuilder.finish` gives a
:class:`PopulationReport`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from personae.models import Persona
from personae.population.coverage import CoveragePlan, CoverageReport
from personae.population.mapping import META_KEY, persona_meta
from personae.population.quotas import QuotaPlan
from personae.population.taxonomy import Taxonomy

__all__ = ["CellCount", "MarginCount", "PopulationReport", "ReportBuilder", "plot_marginals", "distinct_n"]

_WORD = re.compile(r"\w+", re.UNICODE)


class CellCount(BaseModel):
    """One quota cell: its values, target and achieved count."""

    values: dict[str, str]
    target: int
    achieved: int


class MarginCount(BaseModel):
    """Target and achieved count of one value of a quota attribute."""

    target: int
    achieved: int


class PopulationReport(BaseModel):
    """What a population run produced and how well it met its spec."""

    name: str
    size: int
    seed: int
    produced: int
    fingerprint: str = ""
    llm_validated: bool = False
    crafted: bool = False
    dedup: bool = False
    dedup_threshold: float | None = None
    cells: list[CellCount] = Field(default_factory=list)
    marginals: dict[str, dict[str, MarginCount]] = Field(default_factory=dict)
    quotas_exact: bool = True
    ipf_iterations: int = 0
    ipf_max_error: float = 0.0
    proposals: int = 0
    valid_first_try: int = Field(0, description="proposals that passed validation as sampled, without revision")
    revision_rounds: int = 0
    revised_personas: int = 0
    revised_attributes: dict[str, int] = Field(default_factory=dict)
    rejects: dict[str, int] = Field(default_factory=dict, description="rejected proposals by source: rule, llm, dedup, custom")
    reject_reasons: dict[str, int] = Field(default_factory=dict, description="most common reject reasons")
    unresolved: int = Field(0, description="personas kept with validator issues after every attempt")
    llm_failures: int = 0
    attribute_coverage: float = 0.0
    value_coverage: float = 0.0
    mean_attributes: float = 0.0
    uniqueness: float | None = Field(None, description="mean nearest-neighbour cosine distance")
    min_nn_distance: float | None = None
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    wall_s: float = Field(0.0, description="time spent producing the personas, summed over every run that added to the population")
    personas_per_s: float = 0.0
    usage: dict[str, Any] = Field(default_factory=dict, description="model usage producing the personas, summed over those runs")
    coverage: CoverageReport | None = Field(None, description="joint-grid coverage of the sampling axes, with the iid baseline (when axes are set)")

    @property
    def validity_rate(self) -> float:
        """Share of proposals that passed validation as sampled, without revision."""
        return self.valid_first_try / self.proposals if self.proposals else 0.0

    def metrics(self) -> dict[str, float]:
        """Flat numeric metrics (for tracking)."""
        out = {
            "population.size": float(self.size),
            "population.produced": float(self.produced),
            "population.quotas_exact": float(self.quotas_exact),
            "population.validity_rate": self.validity_rate,
            "population.proposals": float(self.proposals),
            "population.revision_rounds": float(self.revision_rounds),
            "population.revised_personas": float(self.revised_personas),
            "population.rejects": float(sum(self.rejects.values())),
            "population.unresolved": float(self.unresolved),
            "population.attribute_coverage": self.attribute_coverage,
            "population.value_coverage": self.value_coverage,
            "population.mean_attributes": self.mean_attributes,
            "population.distinct_1": self.distinct_1,
            "population.distinct_2": self.distinct_2,
            "population.personas_per_s": self.personas_per_s,
            "population.ipf_max_error": self.ipf_max_error,
        }
        for source, n in self.rejects.items():
            out[f"population.rejects.{source}"] = float(n)
        if self.uniqueness is not None:
            out["population.uniqueness"] = self.uniqueness
        if self.min_nn_distance is not None:
            out["population.min_nn_distance"] = self.min_nn_distance
        if self.coverage is not None:
            c = self.coverage
            out["population.coverage.occupied_share"] = c.occupied_share
            out["population.coverage.iid_occupied_share"] = c.iid_occupied_share
            if c.discrepancy is not None and c.iid_discrepancy is not None:
                out["population.coverage.discrepancy"] = c.discrepancy
                out["population.coverage.iid_discrepancy"] = c.iid_discrepancy
        return out

    def summary_rows(self) -> list[tuple[str, str]]:
        """Human-readable ``(label, value)`` rows for a CLI table."""
        rows = [
            ("personas", f"{self.produced} / {self.size}"),
            ("quota cells met exactly", "yes" if self.quotas_exact else "NO"),
            ("validity rate (first proposal)", f"{self.validity_rate:.1%}"),
            ("revised personas / rounds", f"{self.revised_personas} / {self.revision_rounds}"),
            ("rejected proposals", ", ".join(f"{k}: {v}" for k, v in sorted(self.rejects.items())) or "0"),
            ("attribute coverage", f"{self.attribute_coverage:.1%} of taxonomy leaves"),
            ("value coverage", f"{self.value_coverage:.1%} of categorical values"),
            ("attributes per persona", f"{self.mean_attributes:.1f}"),
            ("uniqueness (mean NN distance)", "n/a" if self.uniqueness is None else f"{self.uniqueness:.3f}"),
            ("distinct-1 / distinct-2", f"{self.distinct_1:.3f} / {self.distinct_2:.3f}"),
            ("throughput", f"{self.personas_per_s:.1f} personas/s ({self.wall_s:.1f} s)"),
        ]
        if self.unresolved:
            rows.insert(4, ("kept with unresolved issues", str(self.unresolved)))
        if self.coverage is not None:
            c = self.coverage
            cd = "n/a" if c.discrepancy is None or c.iid_discrepancy is None else f"{c.discrepancy:.4f} vs {c.iid_discrepancy:.4f}"
            rows.append((f"{c.mode} coverage of {' × '.join(c.axes)}", f"{c.occupied} / {c.cells} cells (iid at the same n: {c.iid_occupied}); discrepancy {cd}"))
        return rows


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct n-grams over all n-grams in ``texts`` (lower-cased words)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        words = [w.lower() for w in _WORD.findall(text)]
        grams = list(zip(*(words[i:] for i in range(n))))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


class ReportBuilder:
    """Accumulates report statistics one persona (and reject) at a time."""

    def __init__(self, taxonomy: Taxonomy, plan: QuotaPlan, *, coverage: CoveragePlan | None = None) -> None:
        self.taxonomy = taxonomy
        self.plan = plan
        self.coverage = coverage
        self.coverage_cells: Counter = Counter()
        self.coverage_fallbacks = 0
        self.produced = 0
        self.cell_counts = np.zeros(len(plan.cells), dtype=np.int64)
        self.margins: dict[str, Counter] = {path: Counter() for path in plan.dims}
        self.path_counts: Counter = Counter()
        self.values_seen: set[tuple[str, str]] = set()
        self.attr_total = 0
        self.valid_first_try = 0
        self.revision_rounds = 0
        self.revised_personas = 0
        self.revised_attributes: Counter = Counter()
        self.rejects: Counter = Counter()
        self.reject_reasons: Counter = Counter()
        self.unresolved = 0
        self.llm_failures = 0
        self._grams = {1: set(), 2: set()}
        self._gram_totals = {1: 0, 2: 0}
        self.wall_s = 0.0
        self.usage: Counter = Counter()

    def add(self, persona: Persona) -> None:
        """Count one accepted persona."""
        self.add_many([persona])

    def add_many(self, personas: Sequence[Persona]) -> None:
        """Count accepted personas (as :meth:`add` one by one, with the counting done per batch)."""
        if not personas:
            return
        metas = [persona_meta(p) for p in personas]
        every = [p.attributes for p in personas]
        self.produced += len(personas)
        n_cells = len(self.cell_counts)
        cells = [c for c in (m.get("cell_index") for m in metas) if type(c) is int and 0 <= c < n_cells]
        if cells:
            np.add.at(self.cell_counts, np.asarray(cells, dtype=np.int64), 1)
        if self.coverage is not None:
            for meta, attrs in zip(metas, every):
                grid_cell = self.coverage.cell_of(attrs)
                if grid_cell is not None:
                    self.coverage_cells[grid_cell] += 1
                self.coverage_fallbacks += int(bool(meta.get("coverage_fallback")))
        for path, counter in self.margins.items():
            counter.update([str(attrs.get(path)) for attrs in every])
        path_counts = self.path_counts
        path_counts.update(chain.from_iterable(every))  # counted in C; the metadata key is taken out below
        with_meta = path_counts.pop(META_KEY, 0)
        self.attr_total += sum(map(len, every)) - with_meta
        seen = self.values_seen
        for attrs in every:
            for item in attrs.items():  # (path, value)
                value = item[1]
                if type(value) is str:
                    seen.add(item)
                elif isinstance(value, list):
                    seen.update((item[0], str(v)) for v in value)
                elif isinstance(value, str):
                    seen.add(item)
        for meta in metas:
            revised = meta.get("revised") or []
            rounds = int(meta.get("revision_rounds", 0) or 0)
            self.revision_rounds += rounds
            if revised:
                self.revised_personas += 1
                self.revised_attributes.update(revised)
            if rounds == 0 and not meta.get("unresolved"):
                self.valid_first_try += 1
            if meta.get("unresolved"):
                self.unresolved += 1
            if meta.get("llm_failed"):
                self.llm_failures += 1
        unigrams, bigrams = self._grams[1], self._grams[2]
        for description in (p.description for p in personas):
            words = list(map(str.lower, _WORD.findall(description)))
            unigrams.update(words)  # distinct words and word pairs (as "a b", strings: no garbage-collector work); only the sets' sizes are reported
            bigrams.update(map(" ".join, zip(words, words[1:])))
            self._gram_totals[1] += len(words)
            self._gram_totals[2] += max(len(words) - 1, 0)

    def add_rejects(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Count rejected proposals (records as written to rejects.jsonl)."""
        for record in records:
            source = str(record.get("source", "custom"))
            self.rejects[source] += 1
            if source == "dedup" and not record.get("revision_rounds"):
                self.valid_first_try += 1  # it passed validation as sampled; only its twin was the problem
            reason = str(record.get("reason", ""))[:160]
            self.reject_reasons[reason] += 1

    def add_work(self, wall_s: float, usage: Mapping[str, float] | None = None) -> None:
        """Count the time and model usage (flat counters, as in ``UsageTracker.snapshot``) spent producing personas.

        A resumed run adds the work of the runs before it too, so the report's time, throughput
        and usage are the whole population's.
        """
        self.wall_s += wall_s
        self.usage.update(usage or {})

    def finish(self, *, name: str, seed: int, fingerprint: str = "", nearest: np.ndarray | None = None, llm_validated: bool = False, crafted: bool = False, dedup_threshold: float | None = None, wall_s: float = 0.0, usage: Mapping[str, Any] | None = None) -> PopulationReport:
        """The report; ``nearest`` is each persona's highest similarity to another.

        ``wall_s`` and ``usage`` are work not yet counted with :meth:`add_work`; the report holds
        the sum of all of it.
        """
        wall_s += self.wall_s
        total_usage = Counter(self.usage)
        total_usage.update(usage or {})
        cells = [CellCount(values=c.values, target=c.target, achieved=int(n)) for c, n in zip(self.plan.cells, self.cell_counts)]
        margins: dict[str, dict[str, MarginCount]] = {}
        for path, targets in self.plan.marginal_targets.items():
            got = self.margins.get(path, Counter())
            margins[path] = {value: MarginCount(target=t, achieved=int(got.get(value, 0))) for value, t in targets.items()}
        leaves = self.taxonomy.leaves
        categorical = {(leaf.path, v) for leaf in leaves if leaf.type in ("categorical", "multi") for v in leaf.domain}
        uniqueness = min_nn = None
        if nearest is not None and len(nearest) >= 2:
            distances = 1.0 - np.asarray(nearest, dtype=np.float64)
            uniqueness = float(distances.mean())
            min_nn = float(distances.min())
        proposals = self.produced + sum(self.rejects.values())
        complete = self.produced == self.plan.size
        return PopulationReport(
            name=name,
            size=self.plan.size,
            seed=seed,
            produced=self.produced,
            fingerprint=fingerprint,
            llm_validated=llm_validated,
            crafted=crafted,
            dedup=dedup_threshold is not None,
            dedup_threshold=dedup_threshold,
            cells=cells,
            marginals=margins,
            quotas_exact=complete and all(c.target == c.achieved for c in cells) and all(m.target == m.achieved for ms in margins.values() for m in ms.values()),
            ipf_iterations=self.plan.ipf_iterations,
            ipf_max_error=float(self.plan.ipf_max_error) if math.isfinite(self.plan.ipf_max_error) else -1.0,
            proposals=proposals,
            valid_first_try=self.valid_first_try,
            revision_rounds=self.revision_rounds,
            revised_personas=self.revised_personas,
            revised_attributes=dict(self.revised_attributes.most_common()),
            rejects=dict(sorted(self.rejects.items())),
            reject_reasons=dict(self.reject_reasons.most_common(20)),
            unresolved=self.unresolved,
            llm_failures=self.llm_failures,
            attribute_coverage=len(self.path_counts) / len(leaves) if leaves else 0.0,
            value_coverage=len(self.values_seen & categorical) / len(categorical) if categorical else 0.0,
            mean_attributes=self.attr_total / self.produced if self.produced else 0.0,
            uniqueness=uniqueness,
            min_nn_distance=min_nn,
            distinct_1=len(self._grams[1]) / self._gram_totals[1] if self._gram_totals[1] else 0.0,
            distinct_2=len(self._grams[2]) / self._gram_totals[2] if self._gram_totals[2] else 0.0,
            wall_s=wall_s,
            personas_per_s=self.produced / wall_s if wall_s > 0 else 0.0,
            usage=dict(total_usage),
            coverage=self.coverage.report(self.coverage_cells, fallbacks=self.coverage_fallbacks) if self.coverage is not None else None,
        )


def plot_marginals(report: PopulationReport, path: str | Path) -> Path | None:
    """Bar chart of target vs achieved counts for every quota attribute (Agg backend, no pyplot).

    Returns the path written, or ``None`` when the population has no quotas.
    """
    if not report.marginals:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dims = list(report.marginals.items())
    fig = Figure(figsize=(max(6.0, 1.0 + 0.5 * max(len(v) for _, v in dims)), 2.8 * len(dims)))
    FigureCanvasAgg(fig)
    for row, (attr, values) in enumerate(dims):
        ax = fig.add_subplot(len(dims), 1, row + 1)
        labels = list(values)
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [values[v].target for v in labels], width=0.4, label="target")
        ax.bar(x + 0.2, [values[v].achieved for v in labels], width=0.4, label="achieved")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(attr, fontsize=10)
        ax.set_ylabel("personas")
        if row == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
