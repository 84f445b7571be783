"""The realism report in the scorecard: plots as PNG bytes (matplotlib ``Figure`` + Agg canvas, as in
:mod:`personae.evaluation.plots`) and the survey section's template context."""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from personae.survey.realism import RealismReport

__all__ = ["realism_plots", "distributions_plot", "distance_plot", "survey_section"]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def distributions_plot(report: RealismReport) -> bytes | None:
    """Simulated vs human answer shares, one panel per choice question."""
    items = [q for q in report.questions if q.type not in ("text", "numeric") and q.simulated]
    if not items:
        return None
    cols = min(3, len(items))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows))
    for i, item in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        codes = item.options or sorted(set(item.simulated) | set(item.human or {}))
        x = range(len(codes))
        ax.bar([v - 0.2 for v in x], [item.simulated.get(c, 0.0) for c in codes], width=0.4, label="simulated", color="#1f4e79")
        if item.human is not None:
            ax.bar([v + 0.2 for v in x], [item.human.get(c, 0.0) for c in codes], width=0.4, label="human", color="#f4b183")
        ax.set_xticks(list(x))
        ax.set_xticklabels([c[:14] for c in codes], rotation=35, ha="right", fontsize=7)
        title = item.id if item.distance is None else f"{item.id} (d={item.distance:.2f})"
        ax.set_title(title, fontsize=9)
        if i == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def distance_plot(report: RealismReport) -> bytes | None:
    """Distance to the human distribution per question (0 = the same)."""
    items = [q for q in report.questions if q.distance is not None]
    if not items:
        return None
    fig = Figure(figsize=(6, max(2.0, 0.35 * len(items))))
    ax = fig.add_subplot()
    ax.barh([q.id for q in items], [q.distance for q in items], color="#1f4e79")
    ax.set_xlim(0, 1)
    ax.set_xlabel("distance to humans (Wasserstein/scale or Jensen–Shannon)")
    ax.set_title(f"Representativeness {report.representativeness:.2f}" if report.representativeness is not None else "Distance")
    return _png(fig)


def realism_plots(report: RealismReport) -> dict[str, bytes]:
    """Every realism plot that has data, by file stem."""
    out = {"survey_distributions": distributions_plot(report), "survey_distance": distance_plot(report)}
    return {k: v for k, v in out.items() if v is not None}


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if float(value).is_integer() and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.3f}"


def survey_section(r: RealismReport) -> dict[str, Any]:
    """The scorecard's survey section: what its template renders."""
    rows = [{
        "id": q.id, "type": q.type, "metric": q.metric or "", "n": f"{q.n_answered}/{q.n_asked}", "distance": _fmt(q.distance),
        "variance_ratio": _fmt(q.variance_ratio), "extreme": f"{_fmt(q.extreme_rate)} / {_fmt(q.human_extreme_rate)}",
        "midpoint": f"{_fmt(q.midpoint_rate)} / {_fmt(q.human_midpoint_rate)}", "acquiescence": f"{_fmt(q.acquiescence)} / {_fmt(q.human_acquiescence)}",
        "refusal": f"{_fmt(q.refusal_rate)} / {_fmt(q.human_refusal_rate)}",
    } for q in r.questions]
    calibration = None
    if r.calibration:
        split = r.calibration.get("split") or {}
        part = {qid: name for name in ("train", "validation", "test") for qid in split.get(name, [])}
        raked = r.calibration.get("reweighted") or {}
        mapping = r.calibration.get("mapped") or {}
        calibration = {
            "rows": [{"id": q.id, "raw": _fmt(q.distance), "reweighted": _fmt(q.reweighted_distance), "mapped": _fmt(q.mapped_distance),
                      "split": part.get(q.id, "")} for q in r.questions if q.distance is not None],
            "raw_mean": _fmt(r.mean_distance),
            "reweighted_mean": _fmt(_mean_of(q.reweighted_distance for q in r.questions)),
            "held_out_raw_mean": _fmt(_mean_of(q.distance for q in r.questions if q.mapped_distance is not None)),
            "mapped_mean": _fmt(_mean_of(q.mapped_distance for q in r.questions)),
            "raked_to": ", ".join(f"{a}: " + ", ".join(f"{v} {_fmt(s)}" for v, s in shares.items()) for a, shares in (raked.get("targets") or {}).items()),
            "raking_error": _fmt(raked.get("max_error")) if raked else "",
            "mapping": (f"shift {_fmt(mapping.get('shift'))}, stretch {_fmt(mapping.get('stretch'))}, fitted on "
                        + ", ".join(mapping.get("fitted_on") or [])) if mapping else "",
            "split_seed": split.get("seed", ""),
            "notes": [*r.calibration.get("notes", []), *(raked.get("warnings") or [])],
        }
    cells = [{"question": c.question_id, "cell": c.cell, "n": f"{c.n_simulated}/{_fmt(c.n_human)}", "distance": _fmt(c.distance), "note": c.skipped or ""} for c in r.cells]
    return {
        "instrument": r.instrument, "mode": r.mode or "", "target": r.target or "", "source": r.target_source or "",
        "score": _fmt(r.representativeness), "n": r.n_respondents, "rows": rows, "cells": cells, "warnings": r.warnings,
        "profiles": f"{r.profiles.n_distinct} distinct of {r.profiles.n_respondents}", "collapsed": r.profiles.collapsed,
        "calibration": calibration,
    }


def _mean_of(values) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
