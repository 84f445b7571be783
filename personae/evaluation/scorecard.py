"""The scorecard: every metric of a run in one JSON, one self-contained HTML report and plots.

Files written by :meth:`Scorecard.write` into ``out_dir``:

* ``scorecard.json`` — all aggregate metrics, reports and config (per-conversation
  values and judged answers go to the two JSONL files below, to keep it small);
* ``scorecard.html`` — tables and plots (PNGs embedded as base64), opens anywhere;
* ``plots/*.png`` — the same plots as files (for MLflow artifacts);
* ``conversation_metrics.jsonl`` and ``judged_items.jsonl`` when there is data.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup
from pydantic import BaseModel, Field
from rich.table import Table

from personae.evaluation.compare import ComparisonReport
from personae.evaluation.config import EvaluationConfig
from personae.evaluation.judged import JudgedReport
from personae.evaluation.plots import scorecard_plots
from personae.evaluation.probes import ProbeReport
from personae.evaluation.reference import ReferenceReport
from personae.evaluation.validation import HEADLINE_METRICS, measured_validity
from personae.evaluation.transcript import TranscriptReport
from personae.evaluation.viewer import MAX_CONVERSATIONS, embed_json, transcript_view
from personae.jsonl import write_jsonl
from personae.models import Conversation
from personae.survey.plots import realism_plots, survey_section
from personae.survey.realism import RealismReport

__all__ = ["Scorecard", "population_metrics", "METRIC_HELP"]

_TEMPLATES = Path(__file__).resolve().parent.parent / "data"
_MAX_PERSONA_ROWS = 200
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")

METRIC_HELP: dict[str, str] = {
    "n_utterances": "utterances per conversation",
    "n_speakers": "participants who spoke",
    "words_total": "words per conversation",
    "words_mean": "words per utterance",
    "words_std": "spread of words per utterance",
    "empty_rate": "share of empty utterances",
    "repetition_rate": "share of turns (≥ 4 words) copying ≥ 60 % of one of the speaker's own earlier turns, in order",
    "exact_repetition_rate": "share of utterances repeating an earlier one verbatim",
    "echo_rate": "share of turns (≥ 4 words) copying ≥ 60 % of one of the partner's two previous turns, in order",
    "echo_lcs": "mean share of a turn's words found, in order, in the partner's most similar recent turn",
    "other_speaker_line_rate": "share of turns writing a line for another participant or claiming another's role",
    "prompt_leak_rate": "share of turns repeating the persona prompt's wording",
    "dominance": "largest excess of a participant's word share over its role's mean share in the scenario's other conversations",
    "self_drift": "1 − cosine of a speaker's first-half and second-half centroids (centred embeddings)",
    "scenario_sim": "centred cosine of turns to the scenario's other conversations (low = off-scenario)",
    "attribution_confusion": "1 − attribution accuracy (persona similarity, centred)",
    "distinct_1": "unique words / words",
    "distinct_2": "unique word pairs / word pairs",
    "top_share": "top speaker's share of words (monopolisation)",
    "turn_top_share": "top speaker's share of turns",
    "gini": "normalised Gini of word counts over participants (0 = equal, 1 = one speaks)",
    "persona_sim": "similarity of utterances to the speaker's own persona",
    "drift_slope": "change in persona similarity per own turn (negative = drifting away)",
    "drift_drop": "persona similarity, first half minus second half (positive = drifting away)",
    "echo": "centred similarity to the partner's preceding turn(s)",
    "echo_baseline": "centred similarity to the partner role's turns in the scenario's other conversations",
    "echo_excess": "echo minus baseline (positive = echoing the partner)",
    "attribution_accuracy": "utterances attributed to the right speaker by persona similarity",
    "role_confusion": "share of turns writing lines for another participant, claiming another's role, or repeating the prompt",
    "authorship_accuracy": "utterances attributed to the right speaker by their other utterances",
    "adherence_rr": "reciprocal rank of the true persona retrieved from the utterances",
    "adherence_hit1": "true persona retrieved first",
}


_HEADLINE = (
    ("echo_rate", "echo rate (turns copying the partner)"),
    ("repetition_rate", "repetition rate (turns copying oneself)"),
    ("role_confusion", "role confusion (lines for others, prompt leaks)"),
    ("echo_excess", "echo excess (semantic)"),
    ("dominance", "dominance (word share over the role's norm)"),
    ("drift_drop", "persona drift (early − late)"),
    ("scenario_sim", "on-scenario similarity"),
)
# lexical metrics do not depend on the embedder: valid wherever they were validated
_LEXICAL = frozenset({"echo_rate", "echo_lcs", "repetition_rate", "role_confusion"})


def validity_for(embedder: str | None) -> dict[str, bool]:
    """Metric → passed validation, for the embedder family of ``embedder`` (``hashing:256`` → ``hashing``)."""
    measured = measured_validity()
    family = (embedder or "").split(":")[-1].split("-")[0] if embedder and embedder.startswith("local:") else (embedder or "").split(":")[0]
    return measured.get(family, {})


def population_metrics(report: dict[str, Any] | None) -> dict[str, float]:
    """Numbers from a population report (its ``metrics`` mapping if it has one, else every numeric leaf)."""
    if not report:
        return {}
    source = report.get("metrics") if isinstance(report.get("metrics"), dict) else report
    out: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, bool):
            out[prefix] = float(value)
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                out[prefix] = float(value)
        elif isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)

    walk("", source)
    return out


class Scorecard(BaseModel):
    """Everything measured about one run."""

    title: str = "personae scorecard"
    n_conversations: int = 0
    n_personas: int = 0
    embedder: str | None = None
    config: EvaluationConfig = Field(default_factory=EvaluationConfig)
    transcript: TranscriptReport | None = None
    judged: JudgedReport | None = None
    population: dict[str, float] | None = None
    comparison: ComparisonReport | None = None
    reference: ReferenceReport | None = None
    survey: RealismReport | None = None
    probes: ProbeReport | None = None
    prompt_versions: dict[str, str] = Field(default_factory=dict)

    # ---- numbers ---------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Every metric as a flat ``name → float`` (finite values only), e.g. for MLflow."""
        out: dict[str, float] = {"n_conversations": float(self.n_conversations), "n_personas": float(self.n_personas)}
        if self.transcript is not None:
            out.update(self.transcript.metrics("transcript"))
        if self.judged is not None:
            out.update(self.judged.metrics("judged"))
        if self.population:
            out.update({f"population.{k}": v for k, v in self.population.items()})
        if self.comparison is not None:
            out.update(self.comparison.metrics("compare"))
        if self.reference is not None:
            out.update(self.reference.metrics("reference"))
        if self.survey is not None:
            out.update(self.survey.metrics("survey"))
        if self.probes is not None:
            out.update(self.probes.metrics("probes"))
        return {_metric_key(k): v for k, v in out.items()}

    def headline(self) -> list[tuple[str, float | None]]:
        """The few figures worth reading first: only transcript metrics that passed validation with every embedder."""
        rows: list[tuple[str, float | None]] = []
        if self.judged is not None:
            rows.append(("PersonaScore", self.judged.persona_score))
            rows.append(("judge agreement (within 1)", self.judged.agreement.within_1 if self.judged.agreement is not None else None))
        if self.transcript is not None:
            agg = self.transcript.aggregate
            # the headline: metrics that passed validation with every embedder measured, so a figure read
            # first means the same whichever embedder produced it (others stay in the table, labelled)
            measured = measured_validity()
            rows += [(label, agg.get(name)) for name, label in _HEADLINE
                     if all(v.get(name, name in _LEXICAL) for v in measured.values()) if measured or name in _LEXICAL]
        if self.reference is not None:
            rows.append(("human-likeness (vs reference)", self.reference.score))
        if self.survey is not None:
            rows.append(("survey representativeness", self.survey.representativeness))
            rows.append(("survey distinct answer profiles", self.survey.profiles.distinct_share))
        if self.probes is not None:
            rows.append(("memory recall, memory on", self.probes.recall_on))
            rows.append(("memory recall, memory off", self.probes.recall_off))
        return rows

    def summary_table(self) -> Table:
        """A rich table of the headline figures and counts."""
        table = Table(title=self.title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row("conversations", str(self.n_conversations))
        table.add_row("personas", str(self.n_personas))
        for label, value in self.headline():
            table.add_row(label, _fmt(value))
        if self.judged is not None:
            for task, value in self.judged.per_task.items():
                table.add_row(f"  task {task}", _fmt(value))
            for label, value in _judge_reliability_rows(self.judged):
                table.add_row(label, value)
        if self.transcript is not None:
            for reason, count in self.transcript.stop_reasons.items():
                table.add_row(f"stop reason {reason}", str(count))
        return table

    # ---- files -----------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document (without per-conversation values and judged answers)."""
        data = self.model_dump(
            mode="json",
            exclude={"transcript": {"per_conversation"}, "judged": {"items"}},
        )
        data["metrics"] = self.metrics()
        return data

    def html(self, plots: dict[str, bytes] | None = None, *, conversations: Sequence[Conversation] | None = None,
             max_conversations: int = MAX_CONVERSATIONS) -> str:
        """The self-contained HTML report; with ``conversations``, a transcript viewer of the first ``max_conversations``."""
        if plots is None:
            plots = self._plots()
        env = SandboxedEnvironment(loader=FileSystemLoader(str(_TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                                   trim_blocks=True, lstrip_blocks=True)
        ctx = self._html_context(plots)
        ctx["viewer"] = _viewer_context(conversations, self.transcript, max_conversations) if conversations else None
        return env.get_template("scorecard.html.j2").render(**ctx)

    def write(self, out_dir: str | os.PathLike, *, conversations: Sequence[Conversation] | None = None) -> dict[str, Path]:
        """Write the JSON, HTML, plots and detail files into ``out_dir``; return name → path.

        ``conversations`` feed the HTML's transcript viewer only (not ``scorecard.json``).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plots = self._plots()
        paths: dict[str, Path] = {}
        for name, data in plots.items():
            paths[f"plot_{name}"] = _write_atomic(out / "plots" / f"{name}.png", data)
        if self.transcript is not None and self.transcript.per_conversation:
            paths["conversation_metrics"] = out / "conversation_metrics.jsonl"
            write_jsonl(paths["conversation_metrics"], self.transcript.per_conversation)
        if self.judged is not None and self.judged.items:
            paths["judged_items"] = out / "judged_items.jsonl"
            write_jsonl(paths["judged_items"], self.judged.items)
        paths["json"] = _write_atomic(out / "scorecard.json", json.dumps(self.to_json_dict(), indent=2, ensure_ascii=False).encode("utf-8"))
        paths["html"] = _write_atomic(out / "scorecard.html", self.html(plots, conversations=conversations).encode("utf-8"))
        return paths

    def _plots(self) -> dict[str, bytes]:
        if not self.config.plots:
            return {}
        plots = scorecard_plots(self.transcript, self.judged, self.comparison)
        if self.survey is not None:
            plots.update(realism_plots(self.survey))
        return plots

    def _html_context(self, plots: dict[str, bytes]) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "title": self.title,
            "n_conversations": self.n_conversations,
            "n_personas": self.n_personas,
            "embedder": self.embedder,
            "headline": [{"label": label, "value": _fmt(v)} for label, v in self.headline()],
            "plots": [{"name": k.replace("_", " "), "data": base64.b64encode(v).decode("ascii")} for k, v in plots.items()],
            "judged": _judged_context(self.judged) if self.judged is not None else None,
            "transcript": _transcript_context(self.transcript) if self.transcript is not None else None,
            "comparison": _comparison_context(self.comparison) if self.comparison is not None else None,
            "reference": _reference_context(self.reference) if self.reference is not None else None,
            "survey": survey_section(self.survey) if self.survey is not None else None,
            "probes": _probes_context(self.probes) if self.probes is not None else None,
            "population": sorted((k, _fmt(v)) for k, v in (self.population or {}).items()),
            "config_json": json.dumps(self.config.model_dump(mode="json"), indent=2),
            "prompt_versions": sorted(self.prompt_versions.items()),
        }
        return ctx


def _transcript_context(t: TranscriptReport) -> dict[str, Any]:
    a = t.adherence
    valid = validity_for(t.embedder)
    specs = {spec.name for spec in HEADLINE_METRICS}

    def validity(name: str) -> str:
        if name not in specs:
            return "descriptive"
        return "validated" if valid.get(name, name in _LEXICAL) else "experimental"

    return {
        "n_measured": t.n_measured,
        "n_conversations": t.n_conversations,
        "rows": [{"name": k, "value": _fmt(v), "help": METRIC_HELP.get(k, ""), "validity": validity(k)} for k, v in t.aggregate.items()],
        "adherence": a,
        "adherence_rows": [
            {"name": "MRR", "value": _fmt(a.mrr)},
            {"name": "hit@1", "value": _fmt(a.hit_1)},
            {"name": f"hit@{a.k}", "value": _fmt(a.hit_k)},
            {"name": "speakers ranked", "value": str(a.n_queries)},
        ],
        "stop_reasons": list(t.stop_reasons.items()),
        "statuses": list(t.statuses.items()),
    }


_UNITS = {"turn": "turns", "reply": "replies", "conversation": "conversations"}


def _probes_context(p: ProbeReport) -> dict[str, Any]:
    def ci(bounds: tuple[float, float] | None) -> str:
        return f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]" if bounds else "–"

    return {
        "n_probes": p.n_probes, "n_answers": p.n_answers, "sources": ", ".join(f"{k}: {v}" for k, v in sorted(p.sources.items())),
        "rows": [
            {"name": "memory on", "value": _fmt(p.recall_on), "ci": ci(p.recall_on_ci)},
            {"name": "memory off", "value": _fmt(p.recall_off), "ci": ci(p.recall_off_ci)},
            {"name": "on − off", "value": _fmt(p.difference), "ci": ci(p.difference_ci)},
        ],
    }


def _reference_context(r: ReferenceReport) -> dict[str, Any]:
    return {
        "label": r.reference,
        "provenance": r.provenance,
        "n_reference": r.n_reference,
        "n_simulated": r.n_simulated,
        "score": _fmt(r.score),
        "split": _fmt(r.human_split_score),
        "rows": [
            {"name": f.name, "help": f.help, "unit": f.unit, "n": f"{f.n_human}/{f.n_simulated} {_UNITS.get(f.unit, f.unit)}", "human": _fmt(f.human_mean),
             "human_std": _fmt(f.human_std), "sim": _fmt(f.simulated_mean), "sim_std": _fmt(f.simulated_std),
             "distance": _fmt(f.distance), "similarity": _fmt(f.similarity), "direction": f.direction}
            for f in r.features
        ],
    }


def _viewer_context(conversations: Sequence[Conversation], report: TranscriptReport | None, limit: int) -> dict[str, Any]:
    view = transcript_view(conversations, report, limit=limit)
    script = (_TEMPLATES / "transcript_viewer.js").read_text(encoding="utf-8")
    return {"n_total": view["n_total"], "n_shown": view["n_shown"], "data": Markup(embed_json(view)), "script": Markup(script)}


def _judged_context(j: JudgedReport) -> dict[str, Any]:
    ag, c = j.agreement, j.by_confidence
    flagged = set(j.reliability.flagged()) if j.reliability is not None else set()
    return {
        "persona_score": _fmt(j.persona_score),
        "n_personas": len(j.personas),
        "n_items": j.n_items,
        "n_failures": j.n_failures,
        "question_failures": j.question_failures,
        "judges": j.judges,
        "judge_headers": [f"{x} ⚠ flagged" if x in flagged else x for x in j.judges],
        "n_abstained": j.n_abstained,
        "n_invalid": j.n_invalid,
        "warnings": j.warnings,
        "sources": [f"questions: {j.questions_source}"] * bool(j.questions_source) + [f"rubrics: {j.rubrics_source}"] * bool(j.rubrics_source),
        "agreement_judges": ", ".join(j.agreement_judges),
        "reliability": _judge_reliability_context(j) if j.reliability is not None else None,
        "task_names": j.tasks,
        "tasks": [{"task": t, "ensemble": _fmt(j.per_task.get(t)), "judges": [_fmt(j.per_judge_task[x].get(t)) for x in j.judges]} for t in j.tasks],
        "agreement": [] if ag is None else [
            {"name": "items scored by ≥2 judges", "value": str(ag.n_items)},
            {"name": "mean absolute difference", "value": _fmt(ag.mean_abs_diff)},
            {"name": "exact agreement", "value": _fmt(ag.exact)},
            {"name": "agreement within 1 point", "value": _fmt(ag.within_1)},
            {"name": "Krippendorff's alpha (interval)", "value": _fmt(ag.krippendorff_alpha)},
            *({"name": f"mean score of {k}", "value": _fmt(v)} for k, v in ag.per_judge_mean.items()),
        ],
        "threshold": c.threshold,
        "confidence": [
            {"name": "high", "n": c.high_n, "mean": _fmt(c.high_mean), "items": c.agreement_high_n, "mad": _fmt(c.agreement_high_mad)},
            {"name": "low", "n": c.low_n, "mean": _fmt(c.low_mean), "items": c.agreement_low_n, "mad": _fmt(c.agreement_low_mad)},
        ],
        "personas": [
            {"name": p.name, "score": _fmt(p.score), "per_task": [_fmt(p.per_task.get(t)) for t in j.tasks], "environments": ", ".join(p.environments)}
            for p in j.personas[:_MAX_PERSONA_ROWS]
        ],
        "personas_truncated": len(j.personas) > _MAX_PERSONA_ROWS,
    }


def _judge_reliability_context(j: JudgedReport) -> dict[str, Any]:
    """Each judge's reliability figures beside its scores, and the thresholds that flag it."""
    r = j.reliability
    t = r.thresholds
    rows = []
    for x in r.judges:
        cal, spk, swap = x.calibration, x.speaker, x.order_swap
        rows.append({
            "judge": x.judge,
            "model": x.model,
            "verdicts": f"{x.scored} / {x.abstained} / {x.invalid} / {x.failures}",
            "order": "–" if swap is None else f"{_fmt(swap.same)} (n={swap.n})",
            "speaker": "–" if spk is None else f"{_fmt(spk.accuracy)} (n={spk.presentations}, p={_fmt(spk.p_value)}, same pick both orders {_fmt(spk.position_consistency)})",
            "calibration": "–" if cal is None else (f"MAE {_fmt(cal.mean_abs_error)}, within-1 {_fmt(cal.within_1)}, ordering {_fmt(cal.ordering)} "
                                                     f"(n={cal.n}/{cal.asked})"),
            "calls": x.calls,
            "status": "reliable" if not x.flags else "FLAGGED: " + "; ".join(x.flags),
            "flagged": bool(x.flags),
        })
    return {
        "rows": rows,
        "calibration_version": r.calibration_version,
        "thresholds": (
            f"order consistency ≥ {t.min_order_consistency:g}; speaker identification ≥ {t.min_speaker_accuracy:g} and above chance (p < {t.max_speaker_p:g}); "
            f"calibration within-1 ≥ {t.min_calibration_within_1:g} and ordering ≥ {t.min_calibration_ordering:g}, with at least half the "
            f"verdicts usable; abstentions ≤ {t.max_abstention_rate:.0%}, invalid verdicts ≤ {t.max_invalid_rate:.0%}, unusable replies ≤ "
            f"{t.max_failure_rate:.0%}; a figure from fewer than {t.min_samples} answers does not flag"
        ),
    }


def _judge_reliability_rows(j: JudgedReport) -> list[tuple[str, str]]:
    """Console rows: invalid and abstained verdicts, and each judge's reliability."""
    rows = [("  verdicts abstained / invalid", f"{j.n_abstained} / {j.n_invalid}")]
    if j.reliability is not None:
        rows += [(f"  judge {x.judge}", "reliable" if not x.flags else "FLAGGED: " + "; ".join(x.flags)) for x in j.reliability.judges]
    return rows


def _comparison_context(c: ComparisonReport) -> dict[str, Any]:
    return {
        "label_a": c.label_a,
        "label_b": c.label_b,
        "test": c.test,
        "correction": "Holm–Bonferroni" if c.correction == "holm" else "Benjamini–Hochberg",
        "alpha": c.alpha,
        "hint": c.sample_size_hint(),
        "rows": [
            {
                "metric": r.metric,
                "mean_a": _fmt(r.mean_a),
                "mean_b": _fmt(r.mean_b),
                "diff": _fmt(r.diff),
                "ci": f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.ci_low is not None else "–",
                "p": _fmt(r.welch_p),
                "p_adjusted": _fmt(r.p_adjusted),
                "d": _fmt(r.cohens_d),
                "n": f"{r.n_a}/{r.n_b} ({r.clusters_a}/{r.clusters_b})",
                "sig": r.significant,
            }
            for r in c.rows
        ],
    }


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 10:
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"


def _metric_key(name: str) -> str:
    """A tracking-safe metric name (MLflow allows letters, digits, ``_ - . / `` and space)."""
    return _UNSAFE_KEY.sub("_", name)


def _write_atomic(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # a report to share, not a secret (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
