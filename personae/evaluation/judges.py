"""Judge reliability: is each judge's score worth reading? (PersonaEval: judges are unreliable.)

For every judge, beside its scores:

* **calibration agreement**: it scores a sample of the calibration set
  (:mod:`personae.evaluation.calibration`, answers with known scores on the packaged
  rubrics, which it is judged on even when the run uses external ones); mean absolute
  error, exact and within-1 agreement, and *ordering*: of the pairs of answers whose
  labels are ≥2 apart, the share it scores in the right order (ties count half);
* **speaker identification** (pre-check): shown two personas and an answer clearly in
  the character of one of them, which one wrote it? Each answer is shown in both option
  orders; accuracy against chance (0.5, one-sided binomial p) and *position
  consistency* (the same persona picked in both orders);
* **order swap**: answers it already scored (the run's own first, then calibration ones)
  re-judged with the rubric's scores listed in reverse; the share scored the same;
* **abstention, invalid verdicts and failures** in the run itself.

A judge is flagged when a figure misses its threshold
(:class:`~personae.evaluation.config.ReliabilityThresholds`). The checks' calls go
through the gateway under the judge's own role, so they are in its per-role accounting;
the report says how many of them the checks took.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from personae.errors import ModelOutputError
from personae.evaluation.calibration import CalibrationItem, CalibrationSet
from personae.evaluation.config import JudgedConfig, ReliabilityThresholds, TaskName
from personae.evaluation.rubrics import Rubric
from personae.evaluation.text import persona_profile
from personae.evaluation.verdicts import JudgedItem, JudgeVerdict, judge_prompt, judge_verdict
from personae.ids import content_hash
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.nodes.state import derive_seed
from personae.prompts import PromptSet, default_prompts

__all__ = [
    "SpeakerChoice",
    "CalibrationCheck",
    "SpeakerCheck",
    "OrderSwapCheck",
    "JudgeReliability",
    "JudgeReliabilityReport",
    "assess_judges",
    "judge_flags",
    "binomial_p_at_least",
]

log = logging.getLogger(__name__)

_SPEAKER_MAX_TOKENS = 64  # the reply is {"choice": "A"}
_Scored = tuple[Persona, JudgedItem, Rubric | None]  # an answer a judge scored, and the rubric it scored it on (None = packaged)


class SpeakerChoice(BaseModel):
    """A judge's answer to "which of the two people wrote this?"."""

    choice: Literal["A", "B"]


class CalibrationCheck(BaseModel):
    """A judge's scores on calibration answers against their labels."""

    asked: int
    n: int = Field(description="verdicts that counted")
    abstained: int = 0
    invalid: int = 0
    failures: int = 0
    mean_abs_error: float | None = None
    exact: float | None = None
    within_1: float | None = None
    bias: float | None = Field(None, description="mean of score − label")
    ordering: float | None = None
    ordering_pairs: int = 0


class SpeakerCheck(BaseModel):
    """Speaker identification: accuracy against chance, and position consistency."""

    answers: int
    presentations: int = Field(description="answers shown and answered (each answer twice: both option orders)")
    accuracy: float | None = None
    p_value: float | None = Field(None, description="one-sided binomial p of the accuracy against chance (0.5)")
    position_consistency: float | None = Field(None, description="share of answers where the same persona was picked in both orders")
    failures: int = 0


class OrderSwapCheck(BaseModel):
    """Scores of the same answers with the rubric as written and reversed."""

    asked: int
    n: int = Field(description="answers with a counted verdict in both orders")
    same: float | None = None
    within_1: float | None = None
    mean_shift: float | None = Field(None, description="mean of reversed − as written")
    skipped: int = Field(0, description="re-judged verdicts that did not count (abstained, invalid, failed)")


class JudgeReliability(BaseModel):
    """One judge's reliability figures and flags."""

    judge: str
    model: str
    verdicts: int = Field(0, description="the run's verdicts from this judge")
    scored: int = 0
    abstained: int = 0
    invalid: int = 0
    failures: int = 0
    abstention_rate: float | None = None
    invalid_rate: float | None = None
    failure_rate: float | None = None
    calibration: CalibrationCheck | None = None
    speaker: SpeakerCheck | None = None
    order_swap: OrderSwapCheck | None = None
    calls: int = Field(0, description="gateway calls the checks took (role = the judge; cache hits included, so a rerun reports the same)")
    flags: list[str] = Field(default_factory=list)

    @property
    def reliable(self) -> bool:
        """No figure missed its threshold."""
        return not self.flags


class JudgeReliabilityReport(BaseModel):
    """Reliability of every judge, the thresholds applied and the calibration set used."""

    judges: list[JudgeReliability]
    thresholds: ReliabilityThresholds
    calibration_version: str | None = None

    def get(self, judge: str) -> JudgeReliability | None:
        """The figures of ``judge``."""
        return next((j for j in self.judges if j.judge == judge), None)

    def flagged(self) -> list[str]:
        """Judges with at least one flag."""
        return [j.judge for j in self.judges if j.flags]

    def metrics(self, prefix: str = "reliability") -> dict[str, float]:
        """Flat, finite figures for tracking."""
        out: dict[str, float | None] = {}
        for j in self.judges:
            p = f"{prefix}.{j.judge}"
            out[f"{p}.flagged"] = float(bool(j.flags))
            out[f"{p}.calls"] = float(j.calls)
            out[f"{p}.abstention_rate"] = j.abstention_rate
            out[f"{p}.invalid_rate"] = j.invalid_rate
            out[f"{p}.failure_rate"] = j.failure_rate
            if j.calibration is not None:
                c = j.calibration
                out.update({f"{p}.calibration_mae": c.mean_abs_error, f"{p}.calibration_within_1": c.within_1, f"{p}.calibration_ordering": c.ordering,
                            f"{p}.calibration_n": float(c.n)})
            if j.speaker is not None:
                out.update({f"{p}.speaker_accuracy": j.speaker.accuracy, f"{p}.speaker_p_value": j.speaker.p_value,
                            f"{p}.speaker_position_consistency": j.speaker.position_consistency})
            if j.order_swap is not None:
                out.update({f"{p}.order_consistency": j.order_swap.same, f"{p}.order_within_1": j.order_swap.within_1, f"{p}.order_n": float(j.order_swap.n)})
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


# ---- flags ---------------------------------------------------------------------


def judge_flags(r: JudgeReliability, t: ReliabilityThresholds) -> list[str]:
    """The thresholds ``r`` misses, each as a short sentence with its figure."""
    flags: list[str] = []

    def rate(label: str, value: float | None, limit: float, n: int) -> None:
        if value is not None and n >= t.min_samples and value > limit:
            flags.append(f"{label} {value:.0%} > {limit:.0%}")

    def least(label: str, value: float | None, limit: float, n: int) -> None:
        if value is not None and n >= t.min_samples and value < limit:
            flags.append(f"{label} {value:.2f} < {limit:.2f} (n={n})")

    attempts = r.verdicts + r.failures
    rate("unusable replies", r.failure_rate, t.max_failure_rate, attempts)
    rate("invalid verdicts", r.invalid_rate, t.max_invalid_rate, r.verdicts)
    rate("abstentions", r.abstention_rate, t.max_abstention_rate, r.verdicts)
    if (c := r.calibration) is not None:
        least("calibration within-1", c.within_1, t.min_calibration_within_1, c.n)
        least("calibration ordering", c.ordering, t.min_calibration_ordering, c.ordering_pairs)
        if c.asked >= t.min_samples and c.n < c.asked / 2:
            flags.append(f"calibration: only {c.n} of {c.asked} verdicts usable")
    if (s := r.speaker) is not None:
        before = len(flags)
        least("speaker identification", s.accuracy, t.min_speaker_accuracy, s.presentations)
        if len(flags) == before and s.p_value is not None and s.presentations >= t.min_samples and s.p_value >= t.max_speaker_p:
            flags.append(f"speaker identification not above chance (p={s.p_value:.2f} ≥ {t.max_speaker_p:g}, n={s.presentations})")
    if (o := r.order_swap) is not None:
        least("order consistency", o.same, t.min_order_consistency, o.n)
        if o.asked >= t.min_samples and o.n < o.asked / 2:
            flags.append(f"order swap: only {o.n} of {o.asked} re-judged verdicts usable")
    return flags


# ---- the checks ------------------------------------------------------------------


def _ranked(keys: Sequence[str], *salt: object) -> list[int]:
    """Indices of ``keys`` in a deterministic pseudo-random order."""
    return sorted(range(len(keys)), key=lambda i: content_hash([*salt, keys[i]]))


def _calibration_sample(cal: CalibrationSet, n: int, seed: int) -> list[CalibrationItem]:
    """``n`` items, alternating high (4–5), low (1–2) and middle labels, so both ends are always in."""
    buckets: list[list[CalibrationItem]] = [[], [], []]
    for i in _ranked([it.id for it in cal.items], seed, "calibration"):
        item = cal.items[i]
        buckets[0 if item.score >= 4 else 1 if item.score <= 2 else 2].append(item)
    out: list[CalibrationItem] = []
    while len(out) < min(n, len(cal.items)):
        for bucket in buckets:
            if bucket and len(out) < n:
                out.append(bucket.pop(0))
    return out


def _ordering(pairs: Sequence[tuple[int, int]]) -> tuple[float | None, int]:
    """Share of (label, score) pairs ≥2 labels apart that the scores order the same way (ties ½)."""
    agree, total = 0.0, 0
    for i, (label_a, score_a) in enumerate(pairs):
        for label_b, score_b in pairs[i + 1 :]:
            if abs(label_a - label_b) < 2:
                continue
            total += 1
            if score_a == score_b:
                agree += 0.5
            elif (score_a > score_b) == (label_a > label_b):
                agree += 1.0
    return (agree / total if total else None), total


def binomial_p_at_least(k: int, n: int, p: float = 0.5) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


class _Checks:
    """The checks of one judge; shared state is the gateway, the limiter and the inputs."""

    def __init__(self, judge: str, *, config: JudgedConfig, gateway: Gateway, prompts: PromptSet | None, limiter: asyncio.Semaphore) -> None:
        self.judge = judge
        self.config = config
        self.gateway = gateway
        self.prompts = prompts
        self.limiter = limiter

    async def _verdict(self, persona: Persona, task: TaskName, question: str, answer: str, *, seed: int, rubric: Rubric | None = None,
                       order: Literal["as_written", "reversed"] = "as_written") -> JudgeVerdict | None:
        async with self.limiter:
            try:
                prompt = judge_prompt(persona, task, question, answer, rubric=rubric, order=order, prompts=self.prompts)
                return await judge_verdict(prompt, judge=self.judge, gateway=self.gateway, seed=seed, abstain_below=self.config.abstain_below,
                                           max_tokens=self.config.judge_max_tokens)
            except ModelOutputError as exc:
                log.info("reliability check of judge %s: unusable reply (%s)", self.judge, exc.message)
                return None

    async def calibration(self, cal: CalibrationSet, sample: list[CalibrationItem]) -> tuple[CalibrationCheck, list[_Scored]]:
        seed = self.config.seed
        verdicts = await asyncio.gather(*(
            self._verdict(cal.persona_of(it), it.task, it.question, it.answer, seed=derive_seed(seed, "calibration", it.id, self.judge)) for it in sample
        ))
        pairs = [(it.score, v.score) for it, v in zip(sample, verdicts) if v is not None and v.counted]
        errors = [score - label for label, score in pairs]
        ordering, n_pairs = _ordering(pairs)
        check = CalibrationCheck(
            asked=len(sample),
            n=len(pairs),
            abstained=sum(v is not None and v.status == "abstained" for v in verdicts),
            invalid=sum(v is not None and v.status == "invalid" for v in verdicts),
            failures=sum(v is None for v in verdicts),
            mean_abs_error=_mean([abs(e) for e in errors]),
            exact=_mean([float(e == 0) for e in errors]),
            within_1=_mean([float(abs(e) <= 1) for e in errors]),
            bias=_mean([float(e) for e in errors]),
            ordering=ordering,
            ordering_pairs=n_pairs,
        )
        judged = [  # judged on the packaged rubric, which the labels refer to
            (cal.persona_of(it), JudgedItem(persona_id=cal.persona_of(it).id, task=it.task, index=0, question=it.question, answer=it.answer, verdicts=[v]), None)
            for it, v in zip(sample, verdicts) if v is not None and v.counted
        ]
        return check, judged

    async def _choose(self, a: Persona, b: Persona, item: CalibrationItem, seed: int) -> str | None:
        prompt = (self.prompts or default_prompts()).render(
            "eval_speaker_id", person_a=persona_profile(a), person_b=persona_profile(b), question=item.question, answer=item.answer
        )
        async with self.limiter:
            try:
                reply = await self.gateway.structured([Message(role="user", content=prompt)], SpeakerChoice, role=self.judge, seed=seed,
                                                     max_tokens=_SPEAKER_MAX_TOKENS)
            except ModelOutputError as exc:
                log.info("speaker identification by judge %s: unusable reply (%s)", self.judge, exc.message)
                return None
        return reply.choice

    async def speaker(self, cal: CalibrationSet, n: int) -> SpeakerCheck:
        seed = self.config.seed
        eligible = [it for it in cal.items if it.identifies_speaker]
        sample = [eligible[i] for i in _ranked([it.id for it in eligible], seed, "speaker")][:n]
        keys = sorted(cal.personas)

        async def one(item: CalibrationItem) -> tuple[bool | None, bool | None]:
            others = [k for k in keys if k != item.persona]
            other = cal.personas[others[_ranked(others, seed, item.id)[0]]]
            true = cal.persona_of(item)
            first, second = await asyncio.gather(
                self._choose(true, other, item, derive_seed(seed, "speaker", item.id, self.judge, 0)),
                self._choose(other, true, item, derive_seed(seed, "speaker", item.id, self.judge, 1)),
            )
            return (None if first is None else first == "A"), (None if second is None else second == "B")

        results = await asyncio.gather(*(one(it) for it in sample))
        answered = [r for pair in results for r in pair if r is not None]
        both = [(a, b) for a, b in results if a is not None and b is not None]
        correct = sum(answered)
        return SpeakerCheck(
            answers=len(sample),
            presentations=len(answered),
            accuracy=correct / len(answered) if answered else None,
            p_value=binomial_p_at_least(correct, len(answered)) if answered else None,
            # the same persona in both orders: right twice or wrong twice
            position_consistency=_mean([float(a == b) for a, b in both]),
            failures=sum(r is None for pair in results for r in pair),
        )

    async def order_swap(self, pool: list[_Scored], n: int) -> OrderSwapCheck:
        """Re-judge up to ``n`` answers of ``pool`` (persona, item, the rubric it was judged on) with the rubric reversed."""
        chosen = pool[:n]

        async def one(persona: Persona, item: JudgedItem, rubric: Rubric | None) -> tuple[int, int] | None:
            before = item.counted_score(self.judge)
            if before is None:  # the pool holds answers this judge scored; nothing to compare otherwise
                return None
            seed = derive_seed(self.config.seed, "order_swap", persona.id, item.task, item.index, item.question, self.judge)
            after = await self._verdict(persona, item.task, item.question, item.answer, seed=seed, rubric=rubric, order="reversed")
            return (before, after.score) if after is not None and after.counted else None

        results = await asyncio.gather(*(one(*entry) for entry in chosen))
        pairs = [r for r in results if r is not None]
        return OrderSwapCheck(
            asked=len(chosen),
            n=len(pairs),
            same=_mean([float(a == b) for a, b in pairs]),
            within_1=_mean([float(abs(a - b) <= 1) for a, b in pairs]),
            mean_shift=_mean([float(b - a) for a, b in pairs]),
            skipped=len(chosen) - len(pairs),
        )


def _run_figures(judge: str, items: Sequence[JudgedItem]) -> dict[str, float | int | None]:
    verdicts = [v for i in items for v in i.verdicts if v.judge == judge]
    failures = sum(judge in i.failures for i in items)
    n = len(verdicts)
    abstained = sum(v.status == "abstained" for v in verdicts)
    invalid = sum(v.status == "invalid" for v in verdicts)
    return {
        "verdicts": n,
        "scored": n - abstained - invalid,
        "abstained": abstained,
        "invalid": invalid,
        "failures": failures,
        "abstention_rate": abstained / n if n else None,
        "invalid_rate": invalid / n if n else None,
        "failure_rate": failures / (n + failures) if n + failures else None,
    }


async def assess_judges(
    items: Sequence[JudgedItem],
    personas: Mapping[str, Persona],
    *,
    config: JudgedConfig,
    gateway: Gateway,
    calibration: CalibrationSet | None,
    judge_models: Mapping[str, str] | None = None,
    rubrics: Mapping[TaskName, Rubric] | None = None,
    prompts: PromptSet | None = None,
) -> JudgeReliabilityReport:
    """Reliability of every judge in ``config.judges`` (checks per ``config.reliability``).

    ``items`` are the run's judged answers and ``personas`` their personas by id;
    ``calibration`` is the calibration set (``None`` skips the calibration and speaker
    checks); ``rubrics`` are external rubrics by task (others: the packaged ones).
    """
    rc = config.reliability
    limiter = asyncio.Semaphore(config.concurrency)
    calibration_sample = _calibration_sample(calibration, rc.calibration_sample, config.seed) if calibration is not None else []

    async def one(judge: str) -> JudgeReliability:
        before = gateway.usage.roles.get(judge)
        calls_before = before.calls if before else 0
        checks = _Checks(judge, config=config, gateway=gateway, prompts=prompts, limiter=limiter)
        report = JudgeReliability(judge=judge, model=(judge_models or {}).get(judge, judge), **_run_figures(judge, items))
        cal_judged: list[_Scored] = []
        tasks = []
        if calibration is not None and calibration_sample:
            tasks.append(checks.calibration(calibration, calibration_sample))
        if calibration is not None and rc.speaker_sample:
            tasks.append(checks.speaker(calibration, rc.speaker_sample))
        for result in await asyncio.gather(*tasks):
            if isinstance(result, SpeakerCheck):
                report.speaker = result
            else:
                report.calibration, cal_judged = result
        if rc.order_swap_sample:
            scored = [it for it in items if it.counted_score(judge) is not None and it.persona_id in personas]
            order = _ranked([f"{it.persona_id}/{it.task}/{it.index}" for it in scored], config.seed, "order_swap")
            run_pool: list[_Scored] = [(personas[scored[i].persona_id], scored[i], (rubrics or {}).get(scored[i].task)) for i in order]
            report.order_swap = await checks.order_swap(run_pool + cal_judged, rc.order_swap_sample)
        after = gateway.usage.roles.get(judge)
        report.calls = (after.calls if after else 0) - calls_before
        report.flags = judge_flags(report, rc.thresholds)
        return report

    judges = await asyncio.gather(*(one(j) for j in config.judges))
    return JudgeReliabilityReport(
        judges=list(judges),
        thresholds=rc.thresholds,
        calibration_version=calibration.version() if calibration is not None else None,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
