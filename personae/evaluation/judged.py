"""Judged evaluation, PersonaGym-style.

For each persona: select relevant environments → write questions per task (or take
them from an external question set, e.g. PersonaGym's) → the persona answers in
character (persona system prompt, gateway role ``persona``) → an ensemble of ≥2 judges
scores each answer on the task's rubric (packaged or external, 1–5, anchored), stating a
verbal confidence. Verdicts below the abstention confidence, or whose rationale copies the
prompt, are reported but not scored (:mod:`personae.evaluation.verdicts`). PersonaScore
is the mean over tasks; agreement between judges on distinct models, scores split by
judge confidence and each judge's reliability (:mod:`personae.evaluation.judges`) come
with it. Every call's seed derives from (persona, task, question, judge), so an
identical rerun replays from the cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, Field

from personae.embeddings.base import Embedder
from personae.errors import ConfigError, ModelOutputError
from personae.evaluation.config import JudgedConfig, TaskName
from personae.evaluation.environments import Environment, load_environments, select_environments
from personae.evaluation.benchmark import QuestionBank, load_questions
from personae.evaluation.calibration import load_calibration
from personae.evaluation.judged_report import ConfidenceSplit, JudgedReport, PersonaJudged, aggregate_judged, same_model_warnings
from personae.evaluation.judges import assess_judges
from personae.evaluation.rubrics import Rubric, load_rubrics
from personae.evaluation.text import persona_profile
from personae.evaluation.verdicts import JudgedItem, Judgement, JudgeVerdict, judge_answer, judge_prompt, judge_verdict, task_title
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

class QuestionSet(BaseModel):
    """Questions written for one persona and task."""

    questions: list[str] = Field(min_length=1)

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

# ---- the pipeline ---------------------------------------------------------------


def _subset(personas: Sequence[Persona], config: JudgedConfig) -> list[Persona]:
    unique = list({p.id: p for p in personas}.values())
    if config.max_personas is None or len(unique) <= config.max_personas:
        return unique
    ranked = sorted(unique, key=lambda p: content_hash([config.seed, p.id]))
    return ranked[: config.max_personas]


async def _judge_item(
    persona: Persona,
    task: TaskName,
    index: int,
    question: str,
    envs: list[str],
    *,
    config: JudgedConfig,
    gateway: Gateway,
    prompts: PromptSet | None,
    rubric: Rubric | None,
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

    prompt = judge_prompt(persona, task, question, answer, rubric=rubric, prompts=prompts)

    async def one(judge: str) -> JudgeVerdict | str:
        seed = derive_seed(config.seed, "judge", persona.id, task, index, question, judge)
        try:
            return await judge_verdict(prompt, judge=judge, gateway=gateway, seed=seed, abstain_below=config.abstain_below, max_tokens=config.judge_max_tokens)
        except ModelOutputError as exc:
            log.warning("judge %s on persona %s task %s: unusable reply (%s)", judge, persona.id, task, exc.message)
            return exc.message

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
    bank: QuestionBank | None,
    rubrics: Mapping[TaskName, Rubric],
) -> tuple[list[JudgedItem], list[str], int]:
    env_ids: list[str] = []
    if bank is None:
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
    external = bank.for_persona(persona) if bank is not None else {}

    async def task_items(task: TaskName) -> list[JudgedItem] | None:
        if bank is not None:
            questions = external.get(task, [])[: config.questions_per_task]
        else:
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
                *(_judge_item(persona, task, i, q, env_ids, config=config, gateway=gateway, prompts=prompts, rubric=rubrics.get(task))
                  for i, q in enumerate(questions))
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
    """Run the judged suite over ``personas`` and aggregate it into a :class:`JudgedReport`.

    External questions and rubrics (``config.questions``/``config.rubrics``) and the
    calibration set are read first, so a bad file fails before any model call. With
    external questions no environments are selected and no questions are written.
    After the run, the judge-reliability checks (``config.reliability``) score each judge.
    """
    if gateway is None:
        raise ConfigError("the judged evaluation needs a model gateway", field="judged.enabled")
    chosen = _subset(personas, config)
    if not chosen:
        raise ConfigError("the judged evaluation needs at least one persona", field="personas")
    bank = load_questions(config.questions, chosen) if config.questions is not None else None
    rubrics = load_rubrics(config.rubrics) if config.rubrics is not None else {}
    rc = config.reliability
    calibration = load_calibration(rc.calibration) if rc.enabled and (rc.calibration_sample or rc.speaker_sample or rc.order_swap_sample) else None
    judge_models = {j: gateway.model_identity(j) for j in config.judges}
    for warning in same_model_warnings(config.judges, judge_models):
        log.warning(warning)
    envs: list[Environment] = []
    env_vectors = None
    if bank is None:
        envs = environments if environments is not None else load_environments(config.environments)
        env_vectors = await embedder.aembed([e.text() for e in envs]) if embedder is not None else None
    limiter = asyncio.Semaphore(config.concurrency)
    done = 0

    async def run(persona: Persona):
        nonlocal done
        async with limiter:
            result = await _evaluate_persona(
                persona, config=config, gateway=gateway, embedder=embedder, environments=envs, env_vectors=env_vectors, prompts=prompts,
                bank=bank, rubrics=rubrics,
            )
        done += 1
        if on_progress is not None:
            on_progress(done, len(chosen))
        return result

    results = await asyncio.gather(*(run(p) for p in chosen))
    items = [item for its, _, _ in results for item in its]
    env_by_persona = {p.id: envs_ for p, (_, envs_, _) in zip(chosen, results)}
    reliability = None
    if rc.enabled:
        reliability = await assess_judges(items, {p.id: p for p in chosen}, config=config, gateway=gateway, calibration=calibration,
                                          judge_models=judge_models, rubrics=rubrics, prompts=prompts)
        for judge in reliability.judges:
            if judge.flags:
                log.warning("judge %s (%s) is flagged unreliable: %s", judge.judge, judge.model, "; ".join(judge.flags))
    report = aggregate_judged(items, chosen, config=config, env_by_persona=env_by_persona, judge_models=judge_models, reliability=reliability)
    report.question_failures = sum(f for _, _, f in results)
    report.questions_source = bank.source if bank is not None else None
    report.rubrics_source = str(config.rubrics) if config.rubrics is not None else None
    return report
