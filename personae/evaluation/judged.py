"""Judged evaluation, PersonaGym-style.

For each persona: select relevant environments → write questions per task → the
persona answers in character (persona system prompt, gateway role ``persona``) → an
ensemble of ≥2 judges scores each answer on the task's rubric (1–5, anchored), stating
a verbal confidence. PersonaScore is the mean over tasks; judge agreement and scores
split by judge confidence come with it. Every call's seed derives from
(persona, task, question, judge), so an identical rerun replays from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from personae.embeddings.base import Embedder
from personae.errors import ConfigError, ModelOutputError
from personae.evaluation.agreement import AgreementReport, judge_agreement
from personae.evaluation.config import JudgedConfig, TaskName
from personae.evaluation.environments import Environment, load_environments, select_environments
from personae.evaluation.text import finite_mean, persona_profile
from personae.ids import content_hash
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.nodes.state import derive_seed
from personae.prompts import PromptSet, default_prompts

__all__ = [
    "Judgement",
    "QuestionSet",
    "JudgeVerdict",
    "JudgedItem",
    "PersonaJudged",
    "ConfidenceSplit",
    "JudgedReport",
    "task_title",
    "generate_questions",
    "answer_in_character",
    "judge_answer",
    "evaluate_judged",
    "aggregate_judged",
]

log = logging.getLogger(__name__)


class Judgement(BaseModel):
    """What a judge returns: a rubric score, its reasoning and its stated confidence."""

    rationale: str = Field(description="one to three sentences citing the rubric")
    score: int = Field(ge=1, le=5, description="rubric score, 1 (worst) to 5 (best)")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure the judge is of its score, 0 to 1")


class QuestionSet(BaseModel):
    """Questions written for one persona and task."""

    questions: list[str] = Field(min_length=1)


class JudgeVerdict(BaseModel):
    """One judge's judgement of one answer."""

    judge: str
    score: int
    confidence: float
    rationale: str


class JudgedItem(BaseModel):
    """One question put to one persona, its answer, and every judge's verdict."""

    persona_id: str
    task: TaskName
    index: int
    question: str
    answer: str
    environments: list[str] = Field(default_factory=list)
    verdicts: list[JudgeVerdict] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict, description="judge → error, for judges without a usable reply")

    @property
    def score(self) -> float | None:
        """Mean score over the judges that replied."""
        return sum(v.score for v in self.verdicts) / len(self.verdicts) if self.verdicts else None

    def verdict(self, judge: str) -> JudgeVerdict | None:
        """The verdict of ``judge``, if it gave one."""
        return next((v for v in self.verdicts if v.judge == judge), None)


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
    agreement: AgreementReport
    by_confidence: ConfidenceSplit
    n_items: int
    n_failures: int
    question_failures: int = 0
    items: list[JudgedItem] = Field(default_factory=list)

    def metrics(self, prefix: str = "judged") -> dict[str, float]:
        """Flat, finite figures for tracking."""
        out: dict[str, float | None] = {
            f"{prefix}.persona_score": self.persona_score,
            f"{prefix}.n_personas": float(len(self.personas)),
            f"{prefix}.n_items": float(self.n_items),
            f"{prefix}.n_failures": float(self.n_failures),
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
        clean.update(self.agreement.metrics(f"{prefix}.agreement"))
        return clean


def task_title(task: str) -> str:
    """``expected_action`` → ``Expected action``."""
    return task.replace("_", " ").capitalize()


# ---- the four steps -------------------------------------------------------------


async def generate_questions(
    persona: Persona,
    task: TaskName,
    environments: Sequence[Environment],
    *,
    n: int,
    gateway: Gateway,
    role: str = "evaluator",
    seed: int | None = None,
    prompts: PromptSet | None = None,
) -> list[str]:
    """Up to ``n`` distinct questions testing ``persona`` on ``task`` within ``environments``."""
    prompt = (prompts or default_prompts()).render(
        "eval_questions",
        profile=persona_profile(persona),
        environments=[e.model_dump() for e in environments],
        task=task,
        task_title=task_title(task),
        n=n,
    )

    def distinct(reply: QuestionSet) -> list[str]:
        return list(dict.fromkeys(q.strip() for q in reply.questions if q and q.strip()))

    def usable(reply: QuestionSet) -> None:  # a reply without questions is refused, so it is never cached
        if not distinct(reply):
            raise ModelOutputError(f"no usable questions for task {task}", raw=reply.model_dump_json())

    reply = await gateway.structured([Message(role="user", content=prompt)], QuestionSet, role=role, seed=seed, temperature=0.7, check=usable)
    questions = distinct(reply)
    if len(questions) < n:
        log.debug("persona %s task %s: asked for %d questions, got %d", persona.id, task, n, len(questions))
    return questions[:n]


async def answer_in_character(
    persona: Persona,
    question: str,
    *,
    gateway: Gateway,
    role: str = "persona",
    seed: int | None = None,
    max_tokens: int | None = 256,
    prompts: PromptSet | None = None,
) -> str:
    """The persona's in-character answer (persona system prompt + the question)."""
    system = (prompts or default_prompts()).render("eval_persona_system", name=persona.name, profile=persona_profile(persona))
    reply = await gateway.text(
        [Message(role="system", content=system), Message(role="user", content=question)],
        role=role,
        seed=seed,
        max_tokens=max_tokens,
    )
    return reply.text.strip()


async def judge_answer(
    persona: Persona,
    task: TaskName,
    question: str,
    answer: str,
    *,
    judge: str,
    gateway: Gateway,
    seed: int | None = None,
    prompts: PromptSet | None = None,
) -> Judgement:
    """One judge's rubric-anchored judgement of ``answer`` (judge = a gateway role or model name)."""
    ps = prompts or default_prompts()
    rubric = ps.render(f"eval_rubric_{task}", name=persona.name, habits="; ".join(persona.linguistic_habits) or (persona.speaking_style or ""))
    user = ps.render(
        "eval_judge",
        profile=persona_profile(persona),
        task_title=task_title(task),
        rubric=rubric,
        question=question,
        answer=answer,
    )
    messages = [Message(role="system", content=ps.render("eval_judge_system")), Message(role="user", content=user)]
    return await gateway.structured(messages, Judgement, role=judge, seed=seed)


# ---- the pipeline ---------------------------------------------------------------


def _subset(personas: Sequence[Persona], config: JudgedConfig) -> list[Persona]:
    unique = list({p.id: p for p in personas}.values())
    if config.max_personas is None or len(unique) <= config.max_personas:
        return unique
    ranked = sorted(unique, key=lambda p: content_hash([config.seed, p.id]))
    return ranked[: config.max_personas]


async def _judge_item(
    persona: Persona, task: TaskName, index: int, question: str, envs: list[str], *, config: JudgedConfig, gateway: Gateway, prompts: PromptSet | None
) -> JudgedItem:
    answer = await answer_in_character(
        persona,
        question,
        gateway=gateway,
        role=config.persona_role,
        seed=derive_seed(config.seed, "answer", persona.id, task, index, question),
        max_tokens=config.answer_max_tokens,
        prompts=prompts,
    )

    async def one(judge: str) -> JudgeVerdict | str:
        seed = derive_seed(config.seed, "judge", persona.id, task, index, question, judge)
        try:
            j = await judge_answer(persona, task, question, answer, judge=judge, gateway=gateway, seed=seed, prompts=prompts)
        except ModelOutputError as exc:
            log.warning("judge %s on persona %s task %s: unusable reply (%s)", judge, persona.id, task, exc.message)
            return exc.message
        return JudgeVerdict(judge=judge, score=j.score, confidence=j.confidence, rationale=j.rationale)

    results = await asyncio.gather(*(one(j) for j in config.judges))
    item = JudgedItem(persona_id=persona.id, task=task, index=index, question=question, answer=answer, environments=envs)
    for judge, result in zip(config.judges, results):
        if isinstance(result, JudgeVerdict):
            item.verdicts.append(result)
        else:
            item.failures[judge] = result
    return item


async def _evaluate_persona(
    persona: Persona,
    *,
    config: JudgedConfig,
    gateway: Gateway,
    embedder: Embedder | None,
    environments: list[Environment],
    env_vectors,
    prompts: PromptSet | None,
) -> tuple[list[JudgedItem], list[str], int]:
    envs = await select_environments(
        persona,
        environments,
        k=config.environments_per_persona,
        embedder=embedder,
        gateway=gateway,
        method=config.environment_selection,
        role=config.question_role,
        seed=derive_seed(config.seed, "environments", persona.id),
        prompts=prompts,
        env_vectors=env_vectors,
    )
    env_ids = [e.id for e in envs]

    async def task_items(task: TaskName) -> list[JudgedItem] | None:
        try:
            questions = await generate_questions(
                persona,
                task,
                envs,
                n=config.questions_per_task,
                gateway=gateway,
                role=config.question_role,
                seed=derive_seed(config.seed, "questions", persona.id, task),
                prompts=prompts,
            )
        except ModelOutputError as exc:
            log.warning("questions for persona %s task %s: unusable reply (%s)", persona.id, task, exc.message)
            return None
        return list(
            await asyncio.gather(
                *(_judge_item(persona, task, i, q, env_ids, config=config, gateway=gateway, prompts=prompts) for i, q in enumerate(questions))
            )
        )

    per_task = await asyncio.gather(*(task_items(t) for t in config.tasks))
    items = [item for group in per_task if group for item in group]
    return items, env_ids, sum(group is None for group in per_task)


async def evaluate_judged(
    personas: Sequence[Persona],
    *,
    config: JudgedConfig,
    gateway: Gateway,
    embedder: Embedder | None,
    prompts: PromptSet | None = None,
    environments: list[Environment] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> JudgedReport:
    """Run the judged suite over ``personas`` and aggregate it into a :class:`JudgedReport`."""
    if gateway is None:
        raise ConfigError("the judged evaluation needs a model gateway", field="judged.enabled")
    chosen = _subset(personas, config)
    if not chosen:
        raise ConfigError("the judged evaluation needs at least one persona", field="personas")
    envs = environments if environments is not None else load_environments(config.environments)
    env_vectors = await embedder.aembed([e.text() for e in envs]) if embedder is not None else None
    limiter = asyncio.Semaphore(config.concurrency)
    done = 0

    async def run(persona: Persona):
        nonlocal done
        async with limiter:
            result = await _evaluate_persona(
                persona, config=config, gateway=gateway, embedder=embedder, environments=envs, env_vectors=env_vectors, prompts=prompts
            )
        done += 1
        if on_progress is not None:
            on_progress(done, len(chosen))
        return result

    results = await asyncio.gather(*(run(p) for p in chosen))
    items = [item for its, _, _ in results for item in its]
    env_by_persona = {p.id: envs_ for p, (_, envs_, _) in zip(chosen, results)}
    report = aggregate_judged(items, chosen, config=config, env_by_persona=env_by_persona)
    report.question_failures = sum(f for _, _, f in results)
    return report


def aggregate_judged(
    items: Sequence[JudgedItem],
    personas: Sequence[Persona],
    *,
    config: JudgedConfig,
    env_by_persona: dict[str, list[str]] | None = None,
) -> JudgedReport:
    """PersonaScore, per-task and per-judge scores, agreement and the confidence split."""
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
    per_judge_task = {
        j: {t: _mean_or_none(v.score for i in items if i.task == t for v in i.verdicts if v.judge == j) for t in tasks} for j in judges
    }
    agreement = judge_agreement({j: [(v.score if (v := i.verdict(j)) else None) for i in items] for j in judges})
    return JudgedReport(
        judges=judges,
        tasks=tasks,
        persona_score=_mean_or_none(r.score for r in persona_rows),
        per_task=per_task_all,
        per_judge_task=per_judge_task,
        personas=persona_rows,
        agreement=agreement,
        by_confidence=_confidence_split(items, judges, config.confidence_threshold),
        n_items=len(items),
        n_failures=sum(len(i.failures) for i in items),
        items=list(items),
    )


def _confidence_split(items: Sequence[JudgedItem], judges: list[str], threshold: float) -> ConfidenceSplit:
    verdicts = [v for i in items for v in i.verdicts]
    high = [v.score for v in verdicts if v.confidence >= threshold]
    low = [v.score for v in verdicts if v.confidence < threshold]
    mad_high: list[float] = []
    mad_low: list[float] = []
    for item in items:
        if len(item.verdicts) < 2:
            continue
        scores = [v.score for v in item.verdicts]
        spread = _mean_abs_pair_diff(scores)
        (mad_high if all(v.confidence >= threshold for v in item.verdicts) else mad_low).append(spread)
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
