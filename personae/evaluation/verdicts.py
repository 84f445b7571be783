"""A judge's verdict on one answer: the judge prompt, the call, and what comes back."""

from __future__ import annotations

from pydantic import BaseModel, Field

from personae.evaluation.config import TaskName
from personae.evaluation.text import persona_profile
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.prompts import PromptSet, default_prompts

__all__ = ["Judgement", "JudgeVerdict", "JudgedItem", "task_title", "judge_answer"]


class Judgement(BaseModel):
    """What a judge returns: a rubric score, its reasoning and its stated confidence."""

    rationale: str = Field(description="one to three sentences citing the rubric")
    score: int = Field(ge=1, le=5, description="rubric score, 1 (worst) to 5 (best)")
    confidence: float = Field(ge=0.0, le=1.0, description="how sure the judge is of its score, 0 to 1")

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

def task_title(task: str) -> str:
    """``expected_action`` → ``Expected action``."""
    return task.replace("_", " ").capitalize()

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
