"""The judge calibration set: answers with known rubric scores (``personae/data/judge_calibration.yaml``).

How the packaged set was made is written at the top of the file. A user set has the same
format: ``personas`` (key → Persona) and ``items`` (id, persona key, task, question,
answer, score 1–5, why).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from personae.errors import ConfigError
from personae.evaluation.config import TaskName
from personae.ids import content_hash
from personae.models import Persona
from personae.validation import load_model_file

__all__ = ["PACKAGED_CALIBRATION", "CalibrationItem", "CalibrationSet", "load_calibration"]

PACKAGED_CALIBRATION = Path(__file__).resolve().parent.parent / "data" / "judge_calibration.yaml"


class CalibrationItem(BaseModel):
    """An answer whose rubric score is known."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100)
    persona: str = Field(min_length=1, description="key of the persona in the set's personas")
    task: TaskName
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    score: int = Field(ge=1, le=5)
    why: str = ""

    @property
    def identifies_speaker(self) -> bool:
        """An in-character answer (4–5) on a task where character shows (not toxicity control)."""
        return self.score >= 4 and self.task != "toxicity_control"


class CalibrationSet(BaseModel):
    """Personas and labelled answers."""

    model_config = ConfigDict(extra="forbid")

    personas: dict[str, Persona]
    items: list[CalibrationItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CalibrationSet:
        if len(self.personas) < 2:
            raise ValueError("at least two personas (the speaker-identification check picks between two)")
        for i, item in enumerate(self.items):
            if item.persona not in self.personas:
                raise ValueError(f"items[{i}].persona {item.persona!r} is not one of the personas {sorted(self.personas)}")
        ids = [item.id for item in self.items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"item ids must be unique, repeated: {dupes}")
        return self

    def persona_of(self, item: CalibrationItem) -> Persona:
        """The persona who wrote ``item``."""
        return self.personas[item.persona]

    def version(self) -> str:
        """Content hash of the set (reported with the figures it produced)."""
        return content_hash(self.model_dump(mode="json"), length=12)


def load_calibration(path: str | os.PathLike | None = None) -> CalibrationSet:
    """A calibration set from YAML/JSON (``None`` = the packaged one)."""
    path = Path(path) if path is not None else PACKAGED_CALIBRATION
    data = load_model_file(path, CalibrationSet, what="judge calibration set")
    if not data.items:
        raise ConfigError("the calibration set has no items", file=str(path), field="items")
    return data
