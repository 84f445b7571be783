"""Eliciting one answer: direct (structured output) or two-pass (free text, then classified).

Direct elicitation asks the respondent's model for an answer in a schema whose values
are the options' labels (the gateway's structured output, with its fallbacks).
Two-pass elicitation lets the respondent answer in their own words first and then has
a classifier (role ``classifier``) map that text onto the options: the documented cure
for the central-tendency bias of forced-choice answers from LLMs. Every answer comes
back as an :class:`Answer`: option codes, a numeric value, the raw text, and a status.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from personae.errors import ModelOutputError
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.prompts import PromptSet, render_with
from personae.survey.instrument import Question

__all__ = ["Mode", "Answer", "NONE_LABEL", "answer_schema", "classify_schema", "elicit", "question_prompt"]

log = logging.getLogger(__name__)

Mode = Literal["direct", "two_pass"]
NONE_LABEL = "none of these"
"""What the two-pass classifier answers when the free text picks no option."""

AnswerStatus = Literal["answered", "refused", "unclassified", "failed"]


class Answer(BaseModel):
    """One respondent's answer to one question.

    ``codes``: the option codes chosen (several for multiple choice; all of them, in
    order of preference, for a ranking); ``value``: a numeric answer; ``raw``: the
    respondent's own words (two-pass, text questions) or the structured reply;
    ``status``: ``answered``, ``refused`` (a refusal option), ``unclassified`` (the
    free text matched no option) or ``failed`` (no usable reply; ``error`` says why).
    """

    model_config = ConfigDict(extra="forbid")

    question_id: str
    codes: list[str] = Field(default_factory=list)
    value: float | None = None
    raw: str = ""
    status: AnswerStatus = "answered"
    error: str | None = None


def _labels_literal(labels: Sequence[str]) -> Any:
    return Literal[tuple(labels)]  # type: ignore[valid-type]


def answer_schema(question: Question, order: Sequence[str]) -> type[BaseModel]:
    """The structured-output schema of a direct answer (labels in the order shown)."""
    labels = [question.option(c).label for c in order]  # type: ignore[union-attr]
    if question.type in ("single", "likert", "ordinal"):
        field: Any = (_labels_literal(labels), Field(description="the chosen option, exactly as written"))
    elif question.type in ("multiple", "ranking"):
        field = (list[_labels_literal(labels)], Field(description="options exactly as written"))
    elif question.type == "numeric":
        bounds = {k: v for k, v in (("ge", question.min), ("le", question.max)) if v is not None}
        field = (int if question.integer else float, Field(description="the number", **bounds))
    else:
        field = (str, Field(description="the answer in the respondent's words"))
    return create_model("SurveyAnswer", answer=field)


def classify_schema(question: Question, order: Sequence[str]) -> type[BaseModel]:
    """The classifier's schema in two-pass mode (``none of these`` allowed for single choices)."""
    labels = [question.option(c).label for c in order]  # type: ignore[union-attr]
    if question.type in ("single", "likert", "ordinal"):
        field: Any = (_labels_literal([*labels, NONE_LABEL]), Field(description="the option the answer expresses"))
    elif question.type in ("multiple", "ranking"):
        field = (list[_labels_literal(labels)], Field(description="options exactly as written"))
    else:
        field = (float | None, Field(description="the number stated, or null"))
    return create_model("SurveyClassification", answer=field)


def question_prompt(
    question: Question, text: str, order: Sequence[str], *, number: str, earlier: Sequence[dict[str, str]], mode: str,
    prompts: PromptSet | None = None,
) -> str:
    """The user message asking ``question`` (``mode``: ``direct`` or ``free``)."""
    options = [question.option(c).label for c in order]  # type: ignore[union-attr]
    return render_with(prompts, "survey_question", {
        "question": question.model_dump(mode="json"), "text": text, "options": options, "number": number,
        "earlier": list(earlier), "mode": mode,
    })


def _answer_from(question: Question, value: Any, raw: str) -> Answer:
    if question.type == "numeric":
        if value is None:
            return Answer(question_id=question.id, raw=raw, status="unclassified")
        return Answer(question_id=question.id, value=float(value), raw=raw)
    if question.type == "text":
        return Answer(question_id=question.id, raw=str(value))
    picked = value if isinstance(value, list) else [value]
    if picked == [NONE_LABEL]:
        return Answer(question_id=question.id, raw=raw, status="unclassified")
    codes: list[str] = []
    for label in picked:
        option = question.by_label(str(label))
        if option is not None and option.code not in codes:
            codes.append(option.code)
    if question.type == "multiple" and question.max_choices is not None:
        codes = codes[: question.max_choices]
    if not codes:
        return Answer(question_id=question.id, raw=raw, status="unclassified")
    refused = all(question.option(c).refusal for c in codes)  # type: ignore[union-attr]
    return Answer(question_id=question.id, codes=codes, raw=raw, status="refused" if refused else "answered")


async def elicit(
    gateway: Gateway,
    question: Question,
    *,
    system: str,
    text: str,
    order: Sequence[str],
    number: str,
    earlier: Sequence[dict[str, str]],
    mode: Mode,
    seed: int,
    role: str = "respondent",
    classifier_role: str = "classifier",
    temperature: float = 0.7,
    max_tokens: int = 200,
    prompts: PromptSet | None = None,
) -> Answer:
    """Ask ``question`` and return the :class:`Answer`; an unusable model reply gives ``status="failed"``.

    Model call errors (:class:`~personae.errors.ModelCallError`, after the gateway's
    retries) propagate: the respondent's run fails and can be resumed.
    """
    free = mode == "two_pass" or question.type == "text"
    user = question_prompt(question, text, order, number=number, earlier=earlier, mode="free" if free else "direct", prompts=prompts)
    messages = [Message(role="system", content=system), Message(role="user", content=user)]
    try:
        if not free:
            reply = await gateway.structured(messages, answer_schema(question, order), role=role, seed=seed, temperature=temperature, max_tokens=max_tokens)
            value = reply.answer  # type: ignore[attr-defined]
            return _answer_from(question, value, json.dumps(reply.model_dump(mode="json"), ensure_ascii=False))
        response = await gateway.text(messages, role=role, seed=seed, temperature=temperature, max_tokens=max_tokens)
        raw = response.text.strip()
        if question.type == "text":
            return Answer(question_id=question.id, raw=raw, status="answered" if raw else "unclassified")
        content = render_with(prompts, "survey_classify", {
            "question": question.model_dump(mode="json"), "text": text, "answer": raw, "none_label": NONE_LABEL,
            "options": [question.option(c).label for c in order],  # type: ignore[union-attr]
        })
        reply = await gateway.structured([Message(role="user", content=content)], classify_schema(question, order), role=classifier_role, seed=seed)
        return _answer_from(question, reply.answer, raw)  # type: ignore[attr-defined]
    except ModelOutputError as exc:
        log.warning("no usable answer to %s: %s", question.id, exc.message)
        return Answer(question_id=question.id, raw=exc.raw or "", status="failed", error=exc.message)
