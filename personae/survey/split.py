"""Question splits for refinement: train (revisions see it), validation (keeps or drops a revision), test (held out).

:func:`split_questions` shuffles the questions that have a human target (text questions
have no distance and are left out) with a seeded RNG and deals them into the three
splits; the split is data (:class:`QuestionSplit`) so it is recorded beside the run.
:func:`sub_instrument` is the instrument restricted to some questions: skip rules and
``ask_if`` conditions that name a question outside the subset are dropped (that
question is then asked unconditionally; a limit of splitting an instrument with skip
logic), and a question whose text pipes a removed answer is refused.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError
from personae.survey.instrument import Instrument
from personae.survey.targets import HumanTargets

__all__ = ["QuestionSplit", "split_questions", "sub_instrument"]

_PIPE = re.compile(r"{{\s*([A-Za-z0-9_.-]+)\s*}}")


class QuestionSplit(BaseModel):
    """Which questions each split holds (ids, in the instrument's order), and the seed that dealt them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    train: list[str] = Field(min_length=1)
    validation: list[str] = Field(min_length=1)
    test: list[str] = Field(min_length=1)

    def of(self, qid: str) -> str | None:
        for name in ("train", "validation", "test"):
            if qid in getattr(self, name):
                return name
        return None


def split_questions(
    instrument: Instrument, targets: HumanTargets, *, seed: int = 0, fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
) -> QuestionSplit:
    """Deal the targeted, non-text questions into train/validation/test (seeded; each split gets ≥ 1)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise ConfigError("split fractions must be three positive numbers", field="fractions", expected="(train, validation, test), each > 0", got=fractions)
    ids = [q.id for q in instrument.questions if q.type != "text" and targets.overall(q.id) is not None]
    if len(ids) < 3:
        raise ConfigError("refinement needs at least three questions with a human target (train, validation, test)",
                          field="targets", expected="≥ 3 non-text questions with an overall target", got=len(ids))
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    total = sum(fractions)
    n_val = max(1, round(len(ids) * fractions[1] / total))
    n_test = max(1, round(len(ids) * fractions[2] / total))
    n_train = len(ids) - n_val - n_test
    if n_train < 1:
        n_train, n_val, n_test = 1, 1, len(ids) - 2
    order = {qid: i for i, qid in enumerate(ids)}
    deal = lambda part: sorted(part, key=order.__getitem__)  # noqa: E731
    return QuestionSplit(seed=seed, train=deal(shuffled[:n_train]), validation=deal(shuffled[n_train:n_train + n_val]), test=deal(shuffled[n_train + n_val:]))


def sub_instrument(instrument: Instrument, ids: Iterable[str], *, name_suffix: str = "") -> Instrument:
    """``instrument`` with only the questions ``ids`` (see the module doc for skip logic and piping)."""
    keep = set(ids)
    unknown = keep - {q.id for q in instrument.questions}
    if unknown:
        raise ConfigError("a split names questions the instrument does not have", field="questions", expected="question ids of the instrument", got=sorted(unknown))
    questions = []
    for question in instrument.questions:
        if question.id not in keep:
            continue
        piped = [p for p in _PIPE.findall(question.text) if p not in keep]
        if piped:
            raise ConfigError(f"question {question.id!r} pipes the answer to {piped[0]!r}, which is not in the same split",
                              field=f"questions.{question.id}.text", expected="splits that keep piped questions together (or no piping)")
        skip = [r for r in question.skip if (r.to == "end" or r.to in keep) and set(r.when) <= keep]
        ask_if = {k: v for k, v in (question.ask_if or {}).items() if k in keep} or None
        questions.append(question.model_copy(update={"skip": skip, "ask_if": ask_if}))
    return instrument.model_copy(update={"questions": questions, "name": instrument.name + name_suffix})
