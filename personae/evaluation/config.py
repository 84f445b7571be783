"""Configuration of an evaluation: transcript metrics and the judged (PersonaGym-style) suite."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["TASKS", "TaskName", "ReliabilityThresholds", "JudgeReliabilityConfig", "JudgedConfig", "ProbesConfig", "EvaluationConfig"]

TaskName = Literal[
    "expected_action",
    "action_justification",
    "linguistic_habits",
    "persona_consistency",
    "toxicity_control",
]

TASKS: tuple[TaskName, ...] = (
    "expected_action",
    "action_justification",
    "linguistic_habits",
    "persona_consistency",
    "toxicity_control",
)


class ReliabilityThresholds(BaseModel):
    """When a judge is flagged unreliable (each failed threshold is one flag, shown with its figure).

    A check with fewer than ``min_samples`` usable answers is reported but does not flag.
    """

    model_config = ConfigDict(extra="forbid")

    min_order_consistency: float = Field(0.7, ge=0.0, le=1.0, description="share of answers scored the same with the rubric reversed")
    min_speaker_accuracy: float = Field(0.7, ge=0.0, le=1.0, description="speaker identification accuracy (chance = 0.5)")
    max_speaker_p: float = Field(0.05, ge=0.0, le=1.0, description="one-sided binomial p of that accuracy against chance")
    min_calibration_within_1: float = Field(0.7, ge=0.0, le=1.0, description="share of calibration answers scored within 1 of their label")
    min_calibration_ordering: float = Field(0.8, ge=0.0, le=1.0, description="share of calibration pairs ≥2 labels apart scored in the right order")
    max_abstention_rate: float = Field(0.5, ge=0.0, le=1.0, description="share of the run's verdicts abstained")
    max_invalid_rate: float = Field(0.2, ge=0.0, le=1.0, description="share of the run's verdicts invalid (rationale copied from the prompt)")
    max_failure_rate: float = Field(0.2, ge=0.0, le=1.0, description="share of the run's judge calls without a usable reply")
    min_samples: int = Field(4, ge=1, le=1000)


class JudgeReliabilityConfig(BaseModel):
    """The judge-reliability checks: calibration agreement, speaker identification, order swap.

    Extra calls per judge: ``calibration_sample`` + 2 × ``speaker_sample`` (each answer is
    shown with the two personas in both orders) + ``order_swap_sample``. Zero skips a check.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    calibration: Path | None = Field(None, description="calibration set (YAML); None = the packaged one")
    calibration_sample: int = Field(10, ge=0, le=1000, description="calibration answers each judge scores")
    speaker_sample: int = Field(6, ge=0, le=1000, description="answers for the speaker-identification pre-check")
    order_swap_sample: int = Field(6, ge=0, le=1000, description="answers re-judged with the rubric order reversed")
    thresholds: ReliabilityThresholds = Field(default_factory=ReliabilityThresholds)


class JudgedConfig(BaseModel):
    """The judged evaluation: environments → questions → in-character answers → judge ensemble.

    ``judges`` are gateway roles or model names; each one scores every answer, so the
    ensemble's agreement can be reported. Judges are unreliable (PersonaEval), hence ≥2.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    judges: list[str] = Field(default_factory=lambda: ["judge_a", "judge_b"], min_length=2)
    tasks: list[TaskName] = Field(default_factory=lambda: list(TASKS), min_length=1)
    questions_per_task: int = Field(2, ge=1, le=20, description="questions per persona and task: written by the evaluator, or the first ones of external questions")
    environments_per_persona: int = Field(3, ge=1, le=20)
    environment_selection: Literal["embedding", "llm"] = "embedding"
    environments: Path | None = Field(None, description="YAML list of environments; None = the packaged list")
    max_personas: int | None = Field(None, ge=1, description="evaluate a deterministic subset of this size")
    confidence_threshold: float = Field(0.7, ge=0.0, le=1.0, description="judge confidence at or above = 'high'")
    abstain_below: float = Field(0.3, ge=0.0, le=1.0, description="a verdict with lower stated confidence is abstained, not scored")
    questions: Path | None = Field(None, description="external questions (PersonaGym folder of <persona>.json, or one file persona → task → questions)")
    rubrics: Path | None = Field(None, description="external rubrics (PersonaGym folder of <Task>.txt, or YAML/JSON); other tasks use the packaged ones")
    reliability: JudgeReliabilityConfig = Field(default_factory=JudgeReliabilityConfig)
    persona_role: str = "persona"
    question_role: str = Field("evaluator", description="gateway role that selects environments and writes questions")
    answer_max_tokens: int = Field(256, ge=1)
    judge_max_tokens: int = Field(400, ge=16, le=8192, description="reply budget of a judge call; a rationale running past it is an unusable reply")
    concurrency: int = Field(16, ge=1, le=10_000, description="persona pipelines in flight at once")
    seed: int = 0

    @field_validator("judges")
    @classmethod
    def _distinct_judges(cls, judges: list[str]) -> list[str]:
        if len(set(judges)) != len(judges):
            raise ValueError(f"judges must be distinct, got {judges}")
        if any(not j.strip() for j in judges):
            raise ValueError("judge names must not be empty")
        return judges

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks: list[TaskName]) -> list[TaskName]:
        return list(dict.fromkeys(tasks))


class ProbesConfig(BaseModel):
    """Memory probes of a multi-session run (``simulation.sessions`` with memory): recall with memory on against off."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    per_conversation: int = Field(3, ge=1, le=50, description="questions written per earlier-session conversation")
    k: int = Field(16, ge=1, le=200, description="memories retrieved per question with memory on (above what one session leaves)")
    questions: Literal["model", "extract"] = Field("model", description="written by the evaluator model, or a deterministic cloze extraction")
    question_role: str = Field("evaluator", description="gateway role that writes the questions")
    answer_role: str = Field("persona", description="gateway role that answers them (a participant's own model first)")


class EvaluationConfig(BaseModel):
    """What to evaluate and how.

    ``transcript`` switches the judge-free transcript metrics; ``judged`` configures
    the judged suite (off by default: it costs model calls).
    """

    model_config = ConfigDict(extra="forbid")

    transcript: bool = True
    judged: JudgedConfig = Field(default_factory=JudgedConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    echo_window: int = Field(1, ge=1, le=20, description="preceding partner turns an utterance is compared with")
    hit_k: int = Field(5, ge=1, le=1000, description="k of adherence hit@k")
    plots: bool = True
    reference: Path | None = Field(
        None,
        description="JSONL of human conversations (conversations.jsonl schema) to score human-likeness against "
        "(reference.* metrics); None = off",
    )
