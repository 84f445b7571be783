"""Survey instruments: typed questions, option order, piping, skip and stop logic.

An instrument is a YAML (or JSON) file validated by :class:`Instrument`::

    name: opinion
    questions:
      - id: trust
        type: likert
        text: "How far do you agree: most people can be trusted?"
        options: [strongly disagree, disagree, neither, agree, strongly agree]
      - id: why
        type: text
        text: "You said '{{ trust }}'. Why?"          # piping: the label of an earlier answer
        skip: [{when: {trust: [neither]}, to: end}]   # skip and stop logic

Question types: ``likert`` and ``ordinal`` (ordered options), ``single`` and
``multiple`` choice, ``numeric`` (``min``/``max``), ``ranking`` and ``text``. An option
is a label or ``{code, label, refusal}``; a refusal option ("prefer not to say") is
kept last and off the scale. Every question's options are presented in an order drawn
per respondent from a seed (:func:`option_order`): nominal lists are shuffled, ordinal
scales are reversed or not (a scale stays a scale); the order shown is recorded.

All checks that need the whole instrument (ids unique, skip rules and piping pointing
at earlier/later questions that exist, no duplicate options) raise one
:class:`~personae.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from personae.errors import ConfigError
from personae.ids import content_hash
from personae.validation import load_data_file, validate_data

__all__ = [
    "QuestionType",
    "ORDINAL_TYPES",
    "CHOICE_TYPES",
    "Option",
    "SkipRule",
    "Question",
    "Instrument",
    "load_instrument",
    "check_instrument",
    "option_order",
    "pipe_text",
    "next_question",
    "END",
]

QuestionType = Literal["likert", "ordinal", "single", "multiple", "numeric", "ranking", "text"]
ORDINAL_TYPES = frozenset({"likert", "ordinal"})
CHOICE_TYPES = frozenset({"likert", "ordinal", "single", "multiple", "ranking"})
END = "end"
"""The skip target that stops the survey for this respondent."""

_PIPE = re.compile(r"\{\{\s*([A-Za-z_][\w\-]*)\s*\}\}")
_ID = r"^[A-Za-z_][\w\-]{0,99}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Option(_Strict):
    """One answer option: ``code`` (what the table stores) and ``label`` (what respondents see)."""

    code: str = Field(min_length=1, max_length=200)
    label: str = Field(min_length=1, max_length=500)
    refusal: bool = Field(False, description="a non-answer (don't know, prefer not to say): kept last, off the scale")

    @classmethod
    def of(cls, raw: Any) -> Any:
        """A bare label ``"agree"`` becomes ``{code: agree, label: agree}``."""
        if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
            return {"code": str(raw), "label": str(raw)}
        if isinstance(raw, Mapping) and "label" in raw and "code" not in raw:
            return {**raw, "code": str(raw["label"])}
        return raw


class SkipRule(_Strict):
    """``when`` every named earlier question's answer is among the listed codes, go ``to`` a later question (or ``end``)."""

    when: dict[str, list[str]] = Field(min_length=1, description="question id → option codes (any selected code matches)")
    to: str = Field(min_length=1, description="a later question id, or 'end' to stop the survey")


class Question(_Strict):
    """One question of an instrument."""

    id: str = Field(pattern=_ID)
    type: QuestionType
    text: str = Field(min_length=1, max_length=4000, description="may pipe earlier answers: {{ question_id }}")
    options: list[Option] = Field(default_factory=list)
    randomize: bool | None = Field(None, description="draw the option order per respondent; None: the instrument's default")
    min: float | None = Field(None, description="numeric: smallest allowed answer")
    max: float | None = Field(None, description="numeric: largest allowed answer")
    integer: bool = Field(False, description="numeric: whole numbers only")
    max_choices: int | None = Field(None, ge=1, description="multiple: most options one may pick")
    skip: list[SkipRule] = Field(default_factory=list, description="checked after this question is answered")
    ask_if: dict[str, list[str]] | None = Field(None, description="ask only when these earlier answers match (else skipped)")

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        return [Option.of(v) for v in value] if isinstance(value, list) else value

    @property
    def ordinal(self) -> bool:
        return self.type in ORDINAL_TYPES

    @property
    def scale(self) -> list[Option]:
        """The substantive options in their canonical order (refusals left out)."""
        return [o for o in self.options if not o.refusal]

    def option(self, code: str) -> Option | None:
        return next((o for o in self.options if o.code == code), None)

    def position(self, code: str) -> int | None:
        """The 0-based position of ``code`` on the scale (``None`` for refusals and unknown codes)."""
        return next((i for i, o in enumerate(self.scale) if o.code == code), None)

    def by_label(self, label: str) -> Option | None:
        wanted = label.strip().casefold()
        return next((o for o in self.options if o.label.casefold() == wanted or o.code.casefold() == wanted), None)


class Instrument(_Strict):
    """A survey instrument: questions in order, and how options are presented."""

    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    intro: str = Field("", description="shown to the respondent before every question")
    randomize_options: bool = Field(True, description="default for questions without 'randomize'")
    questions: list[Question] = Field(min_length=1)

    def question(self, qid: str) -> Question:
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

    def index(self, qid: str) -> int:
        return next(i for i, q in enumerate(self.questions) if q.id == qid)

    def fingerprint(self) -> str:
        return content_hash(self.model_dump(mode="json"), length=16)


def check_instrument(instrument: Instrument, *, file: str | os.PathLike | None = None) -> Instrument:
    """Cross-question checks; the first problem raises a :class:`ConfigError` naming ``file`` and the field."""
    where = None if file is None else str(file)
    ids = [q.id for q in instrument.questions]
    position = {qid: i for i, qid in enumerate(ids)}
    for i, q in enumerate(instrument.questions):
        field = f"questions[{i}]"
        if ids.index(q.id) != i:
            raise ConfigError(f"question id {q.id!r} is used twice", file=where, field=f"{field}.id", expected="unique question ids", got=q.id)
        _check_options(q, field, where)
        for ref in _PIPE.findall(q.text):
            if ref not in position:
                raise ConfigError(f"question {q.id!r} pipes an answer from a question that does not exist", file=where, field=f"{field}.text", expected=f"one of {ids[:i]}", got=ref)
            if position[ref] >= i:
                raise ConfigError(f"question {q.id!r} pipes the answer of a question asked later or itself", file=where, field=f"{field}.text", expected=f"an earlier question among {ids[:i]}", got=ref)
        conditions = [(f"{field}.ask_if", q.ask_if)] if q.ask_if else []
        conditions += [(f"{field}.skip[{k}].when", rule.when) for k, rule in enumerate(q.skip)]
        for name, when in conditions:
            for ref, codes in when.items():
                if ref not in position:
                    raise ConfigError(f"a condition of question {q.id!r} names a question that does not exist", file=where, field=name, expected=f"one of {ids}", got=ref)
                limit = i if name.endswith("ask_if") else i + 1
                if position[ref] >= limit:
                    raise ConfigError(f"a condition of question {q.id!r} looks at an answer not given yet", file=where, field=name, expected=f"a question up to {q.id!r}", got=ref)
                known = {o.code for o in instrument.questions[position[ref]].options}
                unknown = [c for c in codes if c not in known]
                if unknown:
                    raise ConfigError(f"a condition of question {q.id!r} names options question {ref!r} does not have", file=where, field=f"{name}.{ref}", expected=f"codes among {sorted(known)}", got=unknown)
        for k, rule in enumerate(q.skip):
            if rule.to == END:
                continue
            if rule.to not in position:
                raise ConfigError(f"a skip rule of question {q.id!r} points at a question that does not exist", file=where, field=f"{field}.skip[{k}].to", expected=f"a later question id or 'end' (questions: {ids})", got=rule.to)
            if position[rule.to] <= i:
                raise ConfigError(f"a skip rule of question {q.id!r} points backwards", file=where, field=f"{field}.skip[{k}].to", expected=f"a question after {q.id!r} or 'end'", got=rule.to)
    return instrument


def _check_options(q: Question, field: str, where: str | None) -> None:
    if q.type in CHOICE_TYPES:
        if len(q.scale) < 2:
            raise ConfigError(f"a {q.type} question needs at least two options", file=where, field=f"{field}.options", expected=">= 2 substantive options", got=len(q.scale))
        for key in ("code", "label"):
            values = [getattr(o, key).casefold() for o in q.options]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ConfigError(f"question {q.id!r} lists an option twice", file=where, field=f"{field}.options", expected=f"distinct option {key}s", got=dupes)
        if q.ordinal and len(q.scale) < 3:
            raise ConfigError(f"a {q.type} scale needs at least three points", file=where, field=f"{field}.options", expected=">= 3 substantive options", got=len(q.scale))
    elif q.options:
        raise ConfigError(f"a {q.type} question takes no options", file=where, field=f"{field}.options", expected="no options", got=len(q.options))
    if q.type == "numeric" and q.min is not None and q.max is not None and q.min >= q.max:
        raise ConfigError(f"question {q.id!r} has min >= max", file=where, field=f"{field}.max", expected=f"> {q.min}", got=q.max)
    if q.max_choices is not None and q.type != "multiple":
        raise ConfigError("max_choices applies to multiple-choice questions only", file=where, field=f"{field}.max_choices", expected="type: multiple", got=q.type)


def load_instrument(path: str | os.PathLike) -> Instrument:
    """Read, validate and check an instrument file (YAML or JSON)."""
    path = Path(path)
    data = load_data_file(path)
    if isinstance(data, Mapping) and "instrument" in data and "questions" not in data:
        data = data["instrument"]
    instrument = validate_data(Instrument, data, file=path, what="survey instrument")
    return check_instrument(instrument, file=path)


# ---- per-respondent presentation ------------------------------------------------
def option_order(question: Question, instrument: Instrument, seed: int, respondent_id: str) -> list[str]:
    """The option codes in the order shown to one respondent (deterministic in seed and ids).

    Nominal options are shuffled; an ordinal scale is reversed with probability ½;
    refusal options stay last, in their order. Without randomisation: the file's order.
    """
    if question.type not in CHOICE_TYPES:
        return []
    scale = [o.code for o in question.scale]
    tail = [o.code for o in question.options if o.refusal]
    randomize = instrument.randomize_options if question.randomize is None else question.randomize
    if randomize:
        rng = random.Random(content_hash([seed, respondent_id, question.id, "options"]))
        if question.ordinal:
            if rng.random() < 0.5:
                scale.reverse()
        else:
            rng.shuffle(scale)
    return scale + tail


def pipe_text(question: Question, answers: Mapping[str, Sequence[str] | str | float | None], instrument: Instrument) -> str:
    """``question.text`` with ``{{ qid }}`` replaced by the label(s) of earlier answers (``no answer`` if none)."""

    def label(match: re.Match[str]) -> str:
        ref = match.group(1)
        value = answers.get(ref)
        source = instrument.question(ref)
        if value is None or value == []:
            return "no answer"
        if isinstance(value, (list, tuple)):
            return ", ".join(_label(source, v) for v in value)
        return _label(source, value)

    return _PIPE.sub(label, question.text)


def _label(question: Question, value: Any) -> str:
    option = question.option(str(value)) if question.options else None
    return option.label if option is not None else str(value)


def _matches(when: Mapping[str, Sequence[str]], answers: Mapping[str, Any]) -> bool:
    for ref, codes in when.items():
        given = answers.get(ref)
        given = [] if given is None else (list(given) if isinstance(given, (list, tuple)) else [given])
        if not any(str(g) in codes for g in given):
            return False
    return True


def next_question(instrument: Instrument, answers: Mapping[str, Any], asked: Sequence[str]) -> tuple[Question | None, list[str]]:
    """The next question to ask after ``asked`` (in order), given the answers so far.

    Returns the question (``None`` when the survey is over) and the ids skipped on
    the way (by a skip rule or a failed ``ask_if``). A skip rule of the last asked
    question jumps forward or, with ``to: end``, stops the survey.
    """
    start = 0
    skipped: list[str] = []
    if asked:
        last = instrument.question(asked[-1])
        start = instrument.index(last.id) + 1
        for rule in last.skip:
            if _matches(rule.when, answers):
                target = len(instrument.questions) if rule.to == END else instrument.index(rule.to)
                skipped = [q.id for q in instrument.questions[start:target]]
                start = target
                break
    for q in instrument.questions[start:]:
        if q.ask_if and not _matches(q.ask_if, answers):
            skipped.append(q.id)
            continue
        return q, skipped
    return None, skipped
