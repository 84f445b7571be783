"""External personas and question sets for the judged evaluation; PersonaGym's formats work as they are.

Personas (:func:`load_personas`), by file extension:

* ``.jsonl``: personae :class:`~personae.models.Persona` records, one per line (ids distinct);
* ``.txt``: one persona description per line (blank lines and ``#`` comments skipped);
* ``.json`` / ``.yaml``: a list of description strings or of Persona objects;
* ``.py``: PersonaGym's ``code/personas.py`` as it is: the first top-level assignment of
  a list of string literals, read with :mod:`ast` (the file is never executed).

PersonaGym's personas are one-line descriptions ("A 19-year-old farmer from New York
who is a fitness freak"); each becomes a Persona whose name and description are that line.

Questions (:func:`load_questions`):

* a folder of ``<persona>.json`` files (PersonaGym's ``questions/<benchmark>/``), each
  ``{"<task>": ["question", …], …}`` and named by the persona's description (or its
  name, or its id);
* one JSON/YAML file mapping persona (description, name or id) → ``{task: [questions]}``.

Task names are personae's (``expected_action``…) or PersonaGym's (``Expected Action``,
``Toxicity``, ``Linguistic Habits``, ``Persona Consistency``, ``Action Justification``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from personae.errors import ConfigError
from personae.evaluation.config import TaskName
from personae.evaluation.rubrics import task_from_name
from personae.jsonl import read_jsonl
from personae.models import Persona
from personae.validation import load_data_file, read_text_file, string_list_in_python, validate_data

__all__ = ["QuestionBank", "load_personas", "persona_from_text", "load_questions"]

log = logging.getLogger(__name__)

_MAX_NAME = 200


def persona_from_text(text: str) -> Persona:
    """A persona from a one-line description (PersonaGym's personas)."""
    line = " ".join(text.split())
    name = line if len(line) <= _MAX_NAME else line[: _MAX_NAME - 1].rsplit(" ", 1)[0] + "…"
    return Persona(name=name, description=line)


def load_personas(path: str | os.PathLike) -> list[Persona]:
    """Personas from ``path`` (format by extension, see the module docstring); at least one."""
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        personas = read_jsonl(path, Persona, unique="id")  # a repeated id is an error, as in every persona reader
    elif suffix == ".txt":
        lines = [ln.strip() for ln in read_text_file(path, expected="one persona description per line").splitlines()]
        personas = [persona_from_text(ln) for ln in lines if ln and not ln.startswith("#")]
    elif suffix == ".py":
        personas = [persona_from_text(s) for _, s in string_list_in_python(path)]
    else:
        data = load_data_file(path)
        if not isinstance(data, list):
            raise ConfigError("expected a list of personas", file=file, expected="a list of description strings or Persona objects", got=type(data).__name__)
        personas = []
        for i, entry in enumerate(data):
            if isinstance(entry, str) and entry.strip():
                personas.append(persona_from_text(entry))
            elif isinstance(entry, dict):
                personas.append(validate_data(Persona, entry, file=file, what=f"persona #{i + 1}"))
            else:
                raise ConfigError("a persona must be a description string or a Persona object", file=file, field=f"[{i}]", got=entry)
    if not personas:
        raise ConfigError("no personas in the file", file=file, expected="at least one persona")
    return personas


class QuestionBank(BaseModel):
    """External questions: persona id → task → questions."""

    source: str
    questions: dict[str, dict[TaskName, list[str]]] = Field(default_factory=dict)

    def for_persona(self, persona: Persona) -> dict[TaskName, list[str]]:
        """The questions for ``persona`` by task (empty if it has none)."""
        return self.questions.get(persona.id, {})


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".").casefold()


def _persona_index(personas: Sequence[Persona]) -> dict[str, Persona]:
    index: dict[str, Persona] = {}
    for p in personas:
        for key in (p.id, p.name, p.description):
            if key:
                index.setdefault(_key(key), p)
    return index


def _tasks(data: Any, *, file: str, field: str) -> dict[TaskName, list[str]]:
    if not isinstance(data, Mapping):
        raise ConfigError("expected a mapping task → list of questions", file=file, field=field or None,
                          expected='{"Expected Action": ["…", …], …}', got=type(data).__name__)
    out: dict[TaskName, list[str]] = {}
    for name, questions in data.items():
        where = f"{field}.{name}" if field else str(name)
        task = task_from_name(str(name), file=file, field=where)
        if not isinstance(questions, list):
            raise ConfigError("expected a list of questions", file=file, field=where, got=type(questions).__name__)
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ConfigError("a question must be a non-empty string", file=file, field=f"{where}[{i}]", got=q)
        out.setdefault(task, []).extend(q.strip() for q in questions)
    return out


def load_questions(path: str | os.PathLike, personas: Sequence[Persona]) -> QuestionBank:
    """Questions for ``personas`` from a PersonaGym questions folder or one mapping file.

    Every persona must have questions; entries for other personas are ignored (a
    benchmark folder may hold many more).
    """
    path = Path(path)
    index = _persona_index(personas)
    found: dict[str, dict[TaskName, list[str]]] = {}
    unmatched = 0
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in {".json", ".yaml", ".yml"})
        if not files:
            raise ConfigError("no question files in the folder", file=str(path), expected="<persona description>.json files (PersonaGym)")
        for f in files:
            persona = index.get(_key(f.stem))
            if persona is None:
                unmatched += 1
                continue
            found[persona.id] = _tasks(load_data_file(f), file=str(f), field="")
    else:
        data = load_data_file(path)
        if not isinstance(data, Mapping):
            raise ConfigError("expected a mapping persona → task → questions", file=str(path), got=type(data).__name__)
        for key, tasks in data.items():
            persona = index.get(_key(str(key)))
            if persona is None:
                unmatched += 1
                continue
            found[persona.id] = _tasks(tasks, file=str(path), field=str(key))
    if unmatched:
        log.info("%s: questions for %d personas not being evaluated were skipped", path, unmatched)
    missing = [p for p in personas if not any(found.get(p.id, {}).values())]
    if missing:
        first = missing[0]
        where = f"a file named '{first.description or first.name}.json'" if path.is_dir() else f"an entry '{first.description or first.name}'"
        raise ConfigError(f"no questions for {len(missing)} persona(s), e.g. {first.name!r}", file=str(path), field="persona", expected=where)
    return QuestionBank(source=str(path), questions=found)
