"""A judge's verdict on one answer: the judge prompt, the call, and whether the verdict counts.

A verdict counts as a score only when it is usable:

* **abstained**: the judge's stated confidence is below ``abstain_below``; it said it
  was guessing, so the verdict is reported, not scored;
* **invalid**: the rationale repeats the judge prompt instead of judging: a run of
  :data:`RUN_WORDS` words copied from the prompt's fixed instructions (or its example
  responses), or at least :data:`COPY_SHARE` of its words copied in
  :data:`COPY_WORDS`-word runs from anywhere in the prompt, or no words at all. Weak
  models parrot what they are shown; a copied rationale means the score is not a judgement.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from personae.evaluation.config import TaskName
from personae.evaluation.rubrics import Rubric, RubricOrder, builtin_rubric, render_rubric
from personae.evaluation.text import copied_share, ngrams, persona_profile, words
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.llm.structured import schema_for
from personae.models import Persona
from personae.prompts import PromptSet, default_prompts

__all__ = [
    "RUN_WORDS",
    "COPY_WORDS",
    "COPY_SHARE",
    "VerdictStatus",
    "Judgement",
    "JudgeVerdict",
    "JudgedItem",
    "JudgePrompt",
    "task_title",
    "judge_prompt",
    "judge_answer",
    "judge_verdict",
    "check_rationale",
    "classify_judgement",
]

RUN_WORDS = 6
COPY_WORDS = 5
COPY_SHARE = 0.8

VerdictStatus = Literal["scored", "abstained", "invalid"]


class Judgement(BaseModel):
    """What a judge returns: its reasoning, a rubric score and its stated confidence.

    The field descriptions are labels, not sentences a model could copy as its answer.
    """

    rationale: str = Field(max_length=800, description="reasoning")
    score: int = Field(ge=1, le=5, description="rubric level")
    confidence: float = Field(ge=0.0, le=1.0, description="0 = a guess, 1 = certain")


class JudgeVerdict(BaseModel):
    """One judge's judgement of one answer, and whether it counts as a score."""

    judge: str
    score: int
    confidence: float
    rationale: str
    status: VerdictStatus = "scored"
    reason: str | None = Field(None, description="why the verdict was abstained or invalid")

    @property
    def counted(self) -> bool:
        """Whether the score enters the scores and the agreement."""
        return self.status == "scored"


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
        """Mean score over the verdicts that count (not abstained, not invalid)."""
        counted = [v.score for v in self.verdicts if v.counted]
        return sum(counted) / len(counted) if counted else None

    def verdict(self, judge: str) -> JudgeVerdict | None:
        """The verdict of ``judge`` (counted or not), if it gave one."""
        return next((v for v in self.verdicts if v.judge == judge), None)

    def counted_score(self, judge: str) -> int | None:
        """``judge``'s score if its verdict counts."""
        v = self.verdict(judge)
        return v.score if v is not None and v.counted else None


class JudgePrompt(BaseModel):
    """The messages a judge is sent, and the fixed text a rationale must not parrot."""

    messages: list[Message]
    instructions: str = Field(description="the prompt's fixed text: instructions, output format, example responses")

    def text(self) -> str:
        """Everything the judge is shown."""
        return "\n".join(m.content for m in self.messages)


def task_title(task: str) -> str:
    """``expected_action`` → ``Expected action``."""
    return task.replace("_", " ").capitalize()


def judge_prompt(
    persona: Persona,
    task: TaskName,
    question: str,
    answer: str,
    *,
    rubric: Rubric | None = None,
    order: RubricOrder = "as_written",
    prompts: PromptSet | None = None,
) -> JudgePrompt:
    """The judge prompt for ``answer``: ``rubric`` (default: the packaged one) in ``order``."""
    ps = prompts or default_prompts()
    rubric = rubric or builtin_rubric(task, persona, ps)
    title = rubric.title if rubric.source else task_title(task)

    def user(**values: str) -> str:
        return ps.render("eval_judge", **values)

    system = ps.render("eval_judge_system")
    content = user(profile=persona_profile(persona), task_title=title, rubric=render_rubric(rubric, order=order, prompts=ps), question=question, answer=answer)
    fixed = [system, user(profile="", task_title="", rubric="", question="", answer=""), ps.render("structured_output_hint", schema=schema_for(Judgement))]
    return JudgePrompt(
        messages=[Message(role="system", content=system), Message(role="user", content=content)],
        instructions="\n".join(fixed + rubric.examples()),
    )


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
    rubric: Rubric | None = None,
    order: RubricOrder = "as_written",
    max_tokens: int | None = 512,
) -> Judgement:
    """One judge's rubric-anchored judgement of ``answer`` (judge = a gateway role or model name)."""
    prompt = judge_prompt(persona, task, question, answer, rubric=rubric, order=order, prompts=prompts)
    return await gateway.structured(prompt.messages, Judgement, role=judge, seed=seed, max_tokens=max_tokens)


def check_rationale(rationale: str, prompt: JudgePrompt) -> str | None:
    """Why ``rationale`` is not a judgement (it repeats the prompt), or ``None`` if it is one."""
    tokens = words(rationale)
    if not tokens:
        return "empty rationale"
    n = min(RUN_WORDS, len(tokens))
    if ngrams(tokens, n) & ngrams(words(prompt.instructions), n):
        return f"repeats the judge prompt's fixed text ({n} words or more verbatim)"
    n = min(COPY_WORDS, len(tokens))
    if copied_share(tokens, ngrams(words(prompt.text()), n), n) >= COPY_SHARE:
        return f"copied from the prompt ({COPY_SHARE:.0%} or more of its words)"
    return None


def classify_judgement(judgement: Judgement, *, judge: str, prompt: JudgePrompt, abstain_below: float) -> JudgeVerdict:
    """The verdict of ``judgement``: invalid if its rationale parrots the prompt, abstained if unsure, else scored."""
    verdict = JudgeVerdict(judge=judge, score=judgement.score, confidence=judgement.confidence, rationale=judgement.rationale)
    if (problem := check_rationale(judgement.rationale, prompt)) is not None:
        return verdict.model_copy(update={"status": "invalid", "reason": problem})
    if judgement.confidence < abstain_below:
        return verdict.model_copy(update={"status": "abstained", "reason": f"confidence {judgement.confidence:.2f} < {abstain_below:g}"})
    return verdict


async def judge_verdict(
    prompt: JudgePrompt,
    *,
    judge: str,
    gateway: Gateway,
    abstain_below: float,
    seed: int | None = None,
    max_tokens: int | None = 512,
) -> JudgeVerdict:
    """Send ``prompt`` (from :func:`judge_prompt`) to ``judge`` and classify the reply.

    Raises :class:`~personae.errors.ModelOutputError` when the reply is unusable.
    """
    judgement = await gateway.structured(prompt.messages, Judgement, role=judge, seed=seed, max_tokens=max_tokens)
    return classify_judgement(judgement, judge=judge, prompt=prompt, abstain_below=abstain_below)
