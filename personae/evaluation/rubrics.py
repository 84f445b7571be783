"""Rubrics for the judged evaluation: score descriptions 1–5, with optional per-score examples.

A :class:`Rubric` is data. The packaged rubrics are the prompt templates
``eval_rubric_<task>.j2`` (rendered per persona, then read back with
:func:`parse_rubric_text`); external rubrics come from files (:func:`load_rubrics`):

* **PersonaGym's format as it is**: a folder of ``<Task Name>.txt`` files (``Expected
  Action.txt``, ``Toxicity.txt``, …) with ``Evaluation Task:``, ``Evaluation Task
  Description:`` and one ``Score = N: description`` line per score. Per-score examples
  may be filled in as ``Score N: "example response"`` lines (PersonaGym's own
  score-example format); the ``{score_example}``, ``{persona}``, ``{question}`` and
  ``{response}`` placeholders and the instructions around them are ignored, because
  personae renders every rubric into its own judge prompt.
* **YAML/JSON**: one rubric per file, or a mapping ``task → rubric``::

      task: expected_action          # or PersonaGym's name, "Expected Action"
      title: Expected action in the given setting
      criterion: The persona takes the actions expected of it in the setting.
      scores:
        1: {description: "...", examples: ["an example response scoring 1"]}
        2: "a description without examples"
        ...

Every rubric must describe every score 1 to 5; a missing one is a :class:`ConfigError`
naming the file and the score.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from personae.errors import ConfigError
from personae.evaluation.config import TASKS, TaskName
from personae.models import Persona
from personae.prompts import PromptSet, default_prompts
from personae.validation import load_data_file, read_text_file, validate_data

__all__ = ["SCORES", "RubricOrder", "RubricLevel", "Rubric", "resolve_task", "task_from_name", "parse_rubric_text", "load_rubrics", "builtin_rubric", "render_rubric"]

SCORES: tuple[int, ...] = (1, 2, 3, 4, 5)
RubricOrder = Literal["as_written", "reversed"]

# PersonaGym's task names (and a few spellings) → personae's task names.
_ALIASES: dict[str, TaskName] = {
    "toxicity": "toxicity_control",
    "expected_action_in_given_setting": "expected_action",
    "expected_actions": "expected_action",
    "linguistic_habit": "linguistic_habits",
    "consistency": "persona_consistency",
}
_CRITERION_LINE = re.compile(r"^\s*Score\s*=\s*([1-5])\s*[:.)-]\s*(.*)$", re.IGNORECASE)
_EXAMPLE_LINE = re.compile(r"^\s*Score\s+([1-5])\s*:\s*(?:Response\s*-\s*)?(.*)$", re.IGNORECASE)
_ANCHOR_LINE = re.compile(r"^\s*([1-5])\s*(?:—|–|-|:|\))\s*(.+)$")
_SECTION = re.compile(r"^\s*(Evaluation Task|Evaluation Task Description|Evaluation Criteria|Score Examples)\s*:\s*(.*)$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(score_example|persona|question|response)\}")


class RubricLevel(BaseModel):
    """What one score means, and example responses that earn it."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)

    @field_validator("examples")
    @classmethod
    def _clean_examples(cls, examples: list[str]) -> list[str]:
        return [e.strip() for e in examples if e and e.strip()]


class Rubric(BaseModel):
    """A task's rubric: what is judged and a description (plus examples) for each score 1–5.

    ``scores`` keeps the order the rubric was written in (the judge sees it that way;
    the order-swap check shows it reversed).
    """

    model_config = ConfigDict(extra="forbid")

    task: TaskName
    title: str = Field(min_length=1)
    criterion: str = ""
    scores: dict[int, RubricLevel]
    source: str | None = Field(None, description="file the rubric came from; None = packaged")

    @field_validator("scores")
    @classmethod
    def _every_score(cls, scores: dict[int, RubricLevel]) -> dict[int, RubricLevel]:
        missing = [s for s in SCORES if s not in scores]
        extra = [s for s in scores if s not in SCORES]
        if missing or extra:
            raise ValueError(f"a description for every score 1 to 5 (missing {missing}, unexpected {extra})")
        return scores

    def ordered(self, order: RubricOrder = "as_written") -> list[tuple[int, RubricLevel]]:
        """``(score, level)`` pairs as written, or reversed."""
        pairs = list(self.scores.items())
        return pairs[::-1] if order == "reversed" else pairs

    def examples(self) -> list[str]:
        """Every example response in the rubric."""
        return [e for level in self.scores.values() for e in level.examples]


def resolve_task(name: str) -> TaskName | None:
    """personae's task for ``name`` (``"Expected Action"``, ``"Toxicity"``, ``"linguistic_habits"``…), or ``None``."""
    key = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if key in TASKS:
        return key  # type: ignore[return-value]
    return _ALIASES.get(key)


def task_from_name(name: str, *, file: str | None, field: str) -> TaskName:
    """:func:`resolve_task`, or a :class:`ConfigError` naming ``file`` and ``field``."""
    task = resolve_task(name)
    if task is None:
        raise ConfigError(
            "unknown evaluation task", file=file, field=field,
            expected=f"one of {list(TASKS)} or PersonaGym's names (Expected Action, Toxicity, Linguistic Habits, "
                     "Persona Consistency, Action Justification)",
            got=name,
        )
    return task


# ---- reading rubrics -------------------------------------------------------------


def parse_rubric_text(text: str, *, task: TaskName, file: str | None = None, title: str | None = None) -> Rubric:
    """A rubric from text: PersonaGym's ``Score = N: …`` lines or personae's ``N — …`` lines.

    Lines before the first score line (outside PersonaGym's section headers) form the
    criterion; ``Score N: "…"`` lines are examples of score N.
    """
    sections: dict[str, list[str]] = {}
    criteria: dict[int, list[str]] = {}
    examples: dict[int, list[str]] = {s: [] for s in SCORES}
    preamble: list[str] = []
    section = "preamble"
    current: list[str] | None = None
    lines = text.splitlines()
    personagym = any(_SECTION.match(line) or _CRITERION_LINE.match(line) for line in lines)
    for raw in lines:
        line = _PLACEHOLDER.sub("", raw).rstrip()
        if not line.strip() or set(line.strip()) <= set("-=_*"):
            current = None
            continue
        if m := _SECTION.match(line):
            section, current = m.group(1).lower(), None
            if m.group(2).strip():
                sections.setdefault(section, []).append(m.group(2).strip())
            continue
        if m := _CRITERION_LINE.match(line):
            current = criteria.setdefault(int(m.group(1)), [])
            current.append(m.group(2).strip())
            continue
        if m := _EXAMPLE_LINE.match(line):
            example = m.group(2).strip().strip('"“”').strip()
            current = None
            if example:
                examples[int(m.group(1))].append(example)
            continue
        if not personagym and (m := _ANCHOR_LINE.match(line)):
            current = criteria.setdefault(int(m.group(1)), [])
            current.append(m.group(2).strip())
            continue
        if current is not None:  # a description running over several lines
            current.append(line.strip())
        elif section == "preamble":
            preamble.append(line.strip())
        else:
            sections.setdefault(section, []).append(line.strip())
    missing = [s for s in SCORES if not " ".join(criteria.get(s, [])).strip()]
    if missing:
        raise ConfigError(
            f"the rubric does not describe score {missing[0]}", file=file, field=f"Score = {missing[0]}",
            expected="one line per score 1 to 5, e.g. 'Score = 3: …' (PersonaGym) or '3 — …'", got=f"scores described: {sorted(criteria)}",
        )
    if personagym:
        name = " ".join(sections.get("evaluation task", [])) or title or task
        criterion = " ".join(sections.get("evaluation task description", []))
    else:
        name = title or task
        criterion = " ".join(preamble)
    levels = {s: RubricLevel(description=" ".join(criteria[s]), examples=examples[s]) for s in criteria}  # as written
    return Rubric(task=task, title=name.strip(), criterion=criterion.strip(), scores=levels, source=file)


def _rubric_from_data(data: Any, *, file: str, task_hint: str | None, field: str = "") -> Rubric:
    if not isinstance(data, dict):
        raise ConfigError("expected a rubric mapping", file=file, field=field or None, expected="task, title, criterion, scores: {1..5}", got=type(data).__name__)
    data = dict(data)
    prefix = f"{field}." if field else ""
    name = str(data.pop("task", None) or task_hint or "")
    if not name:
        raise ConfigError("the rubric names no task", file=file, field=f"{prefix}task", expected="a task name, e.g. expected_action")
    task = task_from_name(name, file=file, field=f"{prefix}task")
    scores = data.get("scores")
    if isinstance(scores, dict):
        data["scores"] = {_score_key(k, file=file, field=f"{prefix}scores"): ({"description": v} if isinstance(v, str) else v) for k, v in scores.items()}
    data.setdefault("title", name)
    try:
        return validate_data(Rubric, {**data, "task": task, "source": file}, file=file, what="rubric")
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, field=f"{prefix}{exc.field}" if exc.field else field or None, expected=exc.expected, got=exc.got) from None


def _score_key(key: Any, *, file: str, field: str) -> int:
    try:
        score = int(str(key).strip())
    except ValueError:
        raise ConfigError("a rubric score must be a number 1 to 5", file=file, field=f"{field}.{key}", got=key) from None
    if score not in SCORES:
        raise ConfigError("a rubric score must be a number 1 to 5", file=file, field=f"{field}.{key}", got=key)
    return score


def _load_rubric_file(path: Path) -> list[Rubric]:
    file = str(path)
    if path.suffix.lower() == ".txt":
        task = task_from_name(path.stem, file=file, field="file name (the task)")
        return [parse_rubric_text(read_text_file(path, expected="a rubric"), task=task, file=file, title=path.stem)]
    data = load_data_file(path)
    if isinstance(data, list):
        return [_rubric_from_data(item, file=file, task_hint=None, field=f"[{i}]") for i, item in enumerate(data)]
    if isinstance(data, dict) and ("scores" in data or "task" in data):
        return [_rubric_from_data(data, file=file, task_hint=path.stem)]
    if isinstance(data, dict):
        return [_rubric_from_data(item, file=file, task_hint=str(key), field=str(key)) for key, item in data.items()]
    raise ConfigError("expected a rubric, a list of rubrics or a mapping task → rubric", file=file, got=type(data).__name__)


def load_rubrics(path: str | os.PathLike) -> dict[TaskName, Rubric]:
    """Rubrics by task from a file or a folder (``*.txt`` PersonaGym rubrics, ``*.yaml``/``*.yml``/``*.json``)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in {".txt", ".yaml", ".yml", ".json"})
        if not files:
            raise ConfigError("no rubric files in the folder", file=str(path), expected="<Task Name>.txt (PersonaGym) or *.yaml/*.json rubrics")
    else:
        files = [path]
    out: dict[TaskName, Rubric] = {}
    for file in files:
        for rubric in _load_rubric_file(file):
            if rubric.task in out:
                raise ConfigError(f"two rubrics for task {rubric.task}", file=str(file), field="task", got=[out[rubric.task].source, str(file)])
            out[rubric.task] = rubric
    return out


def builtin_rubric(task: TaskName, persona: Persona, prompts: PromptSet | None = None) -> Rubric:
    """The packaged rubric of ``task`` for ``persona`` (template ``eval_rubric_<task>``)."""
    ps = prompts or default_prompts()
    name = f"eval_rubric_{task}"
    text = ps.render(name, name=persona.name, habits="; ".join(persona.linguistic_habits) or (persona.speaking_style or ""))
    return parse_rubric_text(text, task=task, file=f"{name}.j2", title=task.replace("_", " ").capitalize()).model_copy(update={"source": None})


def render_rubric(rubric: Rubric, *, order: RubricOrder = "as_written", prompts: PromptSet | None = None) -> str:
    """The rubric as the judge reads it (template ``eval_rubric``), its scores as written or reversed."""
    levels = [{"score": s, "description": level.description, "examples": level.examples} for s, level in rubric.ordered(order)]
    return (prompts or default_prompts()).render("eval_rubric", criterion=rubric.criterion, levels=levels)
