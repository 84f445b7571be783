"""Scorecard plots as PNG bytes (matplotlib ``Figure`` + Agg canvas: no pyplot global state)."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from personae.evaluation.compare import ComparisonReport
from personae.evaluation.judged import JudgedReport
from personae.evaluation.transcript import TranscriptReport

__all__ = ["scorecard_plots"]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def drift_plot(report: TranscriptReport) -> bytes | None:
    """Mean similarity to own persona by relative position in a speaker's turns."""
    points = [(i, v) for i, v in enumerate(report.drift_curve) if v is not None]
    if not points:
        return None
    n = len(report.drift_curve)
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.plot([(i + 0.5) / n for i, _ in points], [v for _, v in points], marker="o")
    ax.set_xlabel("relative position in the speaker's turns")
    ax.set_ylabel("similarity to own persona")
    ax.set_title("Persona drift")
    ax.set_xlim(0, 1)
    return _png(fig)


def echo_plot(report: TranscriptReport) -> bytes | None:
    """Per-conversation echo vs its shuffled baseline."""
    echo, base = _finite(report.samples("echo")), _finite(report.samples("echo_baseline"))
    if not echo:
        return None
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.hist([echo, base] if base else [echo], bins=20, label=["echo", "shuffled baseline"][: 2 if base else 1], alpha=0.8)
    ax.set_xlabel("similarity to the partner's turns")
    ax.set_ylabel("conversations")
    ax.set_title("Echoing")
    ax.legend()
    return _png(fig)


def share_plot(report: TranscriptReport) -> bytes | None:
    """Distribution of the top speaker's word share (monopolisation)."""
    shares = _finite(report.samples("top_share"))
    if not shares:
        return None
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.hist(shares, bins=20, range=(0, 1))
    ax.set_xlabel("top speaker's share of words")
    ax.set_ylabel("conversations")
    ax.set_title("Speaker share")
    return _png(fig)


def judged_plot(report: JudgedReport) -> bytes | None:
    """Mean score per task, one bar per judge plus the ensemble."""
    tasks = report.tasks
    series = {"ensemble": [report.per_task.get(t) for t in tasks]}
    series.update({j: [report.per_judge_task[j].get(t) for t in tasks] for j in report.judges})
    if not _finite(series["ensemble"]):
        return None
    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + k * width for i in range(len(tasks))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width=width, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))])
    ax.set_xticklabels([t.replace("_", "\n") for t in tasks], fontsize=8)
    ax.set_ylim(0, 5)
    ax.set_ylabel("score (1–5)")
    ax.set_title("Judged scores per task")
    ax.legend(fontsize=7)
    return _png(fig)


def comparison_plot(report: ComparisonReport) -> bytes | None:
    """Cohen's d per metric; significant ones (p < 0.05) darker."""
    rows = [r for r in report.rows if r.cohens_d is not None]
    if not rows:
        return None
    significant = {r.metric for r in report.significant()}
    fig = Figure(figsize=(6, max(2.5, 0.25 * len(rows))))
    ax = fig.add_subplot()
    ax.barh([r.metric for r in rows], [r.cohens_d for r in rows], color=["#1f4e79" if r.metric in significant else "#9dc3e6" for r in rows])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"Cohen's d ({report.label_b} − {report.label_a})")
    ax.set_title("Effect sizes")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def scorecard_plots(
    transcript: TranscriptReport | None, judged: JudgedReport | None, comparison: ComparisonReport | None
) -> dict[str, bytes]:
    """Every plot that has data, by file stem."""
    out: dict[str, bytes | None] = {}
    if transcript is not None:
        out["drift"] = drift_plot(transcript)
        out["echo"] = echo_plot(transcript)
        out["speaker_share"] = share_plot(transcript)
    if judged is not None:
        out["judged_tasks"] = judged_plot(judged)
    if comparison is not None:
        out["comparison"] = comparison_plot(comparison)
    return {k: v for k, v in out.items() if v is not None}
