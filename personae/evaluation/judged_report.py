"""The judged evaluation's report: PersonaScore, per-task and per-judge scores, agreement, confidence."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, Field

from personae.evaluation.agreement import AgreementReport, judge_agreement
from personae.evaluation.config import JudgedConfig
from personae.evaluation.judges import JudgeReliabilityReport
from personae.evaluation.text import finite_mean
from personae.evaluation.verdicts import JudgedItem
from personae.models import Persona

__all__ = ["PersonaJudged", "ConfidenceSplit", "JudgedReport", "aggregate_judged", "distinct_model_judges", "same_model_warnings"]


class PersonaJudged(BaseModel):
    """Scores of one persona: per task and overall (PersonaScore)."""

    persona_id: str
    name: str
    score: float | None
    per_task: dict[str, float | None]
    environments: list[str]


class ConfidenceSplit(BaseModel):
    """Scores and judge agreement split by the judges' stated confidence."""

    threshold: float
    high_n: int
    high_mean: float | None
    low_n: int
    low_mean: float | None
    agreement_high_n: int = Field(description="items where every judge was confident")
    agreement_high_mad: float | None
    agreement_low_n: int
    agreement_low_mad: float | None


class JudgedReport(BaseModel):
    """The judged evaluation of a set of personas."""

    judges: list[str]
    tasks: list[str]
    persona_score: float | None = Field(description="mean over personas of the mean over tasks")
    per_task: dict[str, float | None]
    per_judge_task: dict[str, dict[str, float | None]]
    personas: list[PersonaJudged]
    agreement: AgreementReport | None = Field(description="between judges on distinct models; None when there are fewer than two")
    agreement_judges: list[str] = Field(default_factory=list, description="the judges the agreement is between (one per model)")
    by_confidence: ConfidenceSplit
    n_items: int
    n_failures: int
    n_abstained: int = Field(0, description="verdicts below the abstention confidence: reported, not scored")
    n_invalid: int = Field(0, description="verdicts whose rationale copies the prompt: reported, not scored")
    question_failures: int = 0
    judge_models: dict[str, str] = Field(default_factory=dict, description="judge → the model it reaches")
    warnings: list[str] = Field(default_factory=list)
    reliability: JudgeReliabilityReport | None = None
    questions_source: str | None = Field(None, description="external question set, if one was used")
    rubrics_source: str | None = Field(None, description="external rubrics, if used")
    items: list[JudgedItem] = Field(default_factory=list)

    def metrics(self, prefix: str = "judged") -> dict[str, float]:
        """Flat, finite figures for tracking."""
        out: dict[str, float | None] = {
            f"{prefix}.persona_score": self.persona_score,
            f"{prefix}.n_personas": float(len(self.personas)),
            f"{prefix}.n_items": float(self.n_items),
            f"{prefix}.n_failures": float(self.n_failures),
            f"{prefix}.n_abstained": float(self.n_abstained),
            f"{prefix}.n_invalid": float(self.n_invalid),
            f"{prefix}.question_failures": float(self.question_failures),
        }
        for task, value in self.per_task.items():
            out[f"{prefix}.task.{task}"] = value
        for judge, tasks in self.per_judge_task.items():
            for task, value in tasks.items():
                out[f"{prefix}.judge.{judge}.{task}"] = value
        c = self.by_confidence
        out.update({
            f"{prefix}.confidence.high_n": float(c.high_n),
            f"{prefix}.confidence.high_mean": c.high_mean,
            f"{prefix}.confidence.low_n": float(c.low_n),
            f"{prefix}.confidence.low_mean": c.low_mean,
            f"{prefix}.confidence.agreement_high_mad": c.agreement_high_mad,
            f"{prefix}.confidence.agreement_low_mad": c.agreement_low_mad,
        })
        clean = {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}
        if self.agreement is not None:
            clean.update(self.agreement.metrics(f"{prefix}.agreement"))
        if self.reliability is not None:
            clean.update(self.reliability.metrics(f"{prefix}.reliability"))
        return clean


def distinct_model_judges(judges: Sequence[str], judge_models: Mapping[str, str] | None) -> list[str]:
    """The first judge of each model (all judges when their models are unknown)."""
    if not judge_models:
        return list(judges)
    seen: dict[str, str] = {}
    for judge in judges:
        seen.setdefault(judge_models.get(judge, judge), judge)
    return list(seen.values())


def same_model_warnings(judges: Sequence[str], judge_models: Mapping[str, str] | None) -> list[str]:
    """A warning per model that serves more than one judge."""
    by_model: dict[str, list[str]] = {}
    for judge in judges:
        by_model.setdefault((judge_models or {}).get(judge, judge), []).append(judge)
    out = []
    for model, group in by_model.items():
        if len(group) > 1:
            whole = len(by_model) == 1
            out.append(
                f"judges {', '.join(group)} all resolve to one model ({model}): "
                + ("no inter-judge agreement is reported, since one model judging twice measures its own sampling, not agreement; "
                   if whole else "only one of them enters the inter-judge agreement; ")
                + "route the judge roles to different models (experiment `models`/`roles`, or `personae evaluate --judge-model ROLE=MODEL`)"
            )
    return out


def aggregate_judged(
    items: Sequence[JudgedItem],
    personas: Sequence[Persona],
    *,
    config: JudgedConfig,
    env_by_persona: dict[str, list[str]] | None = None,
    judge_models: Mapping[str, str] | None = None,
    reliability: JudgeReliabilityReport | None = None,
) -> JudgedReport:
    """PersonaScore, per-task and per-judge scores, agreement and the confidence split.

    Only verdicts that count (not abstained, not invalid) enter scores and agreement.
    Agreement is between judges on distinct models (``judge_models``: judge → model);
    with fewer than two models there is none.
    """
    tasks = list(config.tasks)
    judges = list(config.judges)
    persona_rows = []
    for persona in personas:
        mine = [i for i in items if i.persona_id == persona.id]
        per_task = {t: _mean_or_none(i.score for i in mine if i.task == t) for t in tasks}
        persona_rows.append(
            PersonaJudged(
                persona_id=persona.id,
                name=persona.name,
                score=_mean_or_none(per_task.values()),
                per_task=per_task,
                environments=(env_by_persona or {}).get(persona.id, []),
            )
        )
    per_task_all = {t: _mean_or_none(r.per_task[t] for r in persona_rows) for t in tasks}
    per_judge_task = {j: {t: _mean_or_none(i.counted_score(j) for i in items if i.task == t) for t in tasks} for j in judges}
    distinct = distinct_model_judges(judges, judge_models)
    agreement = judge_agreement({j: [i.counted_score(j) for i in items] for j in distinct}) if len(distinct) >= 2 else None
    verdicts = [v for i in items for v in i.verdicts]
    return JudgedReport(
        judges=judges,
        tasks=tasks,
        persona_score=_mean_or_none(r.score for r in persona_rows),
        per_task=per_task_all,
        per_judge_task=per_judge_task,
        personas=persona_rows,
        agreement=agreement,
        agreement_judges=distinct if agreement is not None else [],
        by_confidence=_confidence_split(items, distinct, config.confidence_threshold),
        n_items=len(items),
        n_failures=sum(len(i.failures) for i in items),
        n_abstained=sum(v.status == "abstained" for v in verdicts),
        n_invalid=sum(v.status == "invalid" for v in verdicts),
        judge_models=dict(judge_models or {}),
        warnings=same_model_warnings(judges, judge_models),
        reliability=reliability,
        items=list(items),
    )


def _confidence_split(items: Sequence[JudgedItem], judges: list[str], threshold: float) -> ConfidenceSplit:
    """Scores by confidence over every counted verdict; judge spread over ``judges`` (one per model)."""
    verdicts = [v for i in items for v in i.verdicts if v.counted]
    high = [v.score for v in verdicts if v.confidence >= threshold]
    low = [v.score for v in verdicts if v.confidence < threshold]
    mad_high: list[float] = []
    mad_low: list[float] = []
    for item in items:
        counted = [v for v in item.verdicts if v.counted and v.judge in judges]
        if len(counted) < 2:
            continue
        spread = _mean_abs_pair_diff([v.score for v in counted])
        (mad_high if all(v.confidence >= threshold for v in counted) else mad_low).append(spread)
    return ConfidenceSplit(
        threshold=threshold,
        high_n=len(high),
        high_mean=_mean_or_none(high),
        low_n=len(low),
        low_mean=_mean_or_none(low),
        agreement_high_n=len(mad_high),
        agreement_high_mad=_mean_or_none(mad_high),
        agreement_low_n=len(mad_low),
        agreement_low_mad=_mean_or_none(mad_low),
    )


def _mean_abs_pair_diff(scores: Sequence[float]) -> float:
    pairs = [abs(a - b) for i, a in enumerate(scores) for b in scores[i + 1 :]]
    return sum(pairs) / len(pairs)


def _mean_or_none(values) -> float | None:
    m = finite_mean(v for v in values if v is not None)
    return None if math.isnan(m) else m
