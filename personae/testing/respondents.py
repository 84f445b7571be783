"""A scripted survey respondent whose answers depend on the persona with known probabilities.

A fake, for tests and for checking refinement and calibration against a known right
answer. :class:`ScriptedRespondents` reads a survey prompt (the respondent's persona
attributes from the system prompt's ``- key: value`` lines, the question id from
``Survey question <id>``), draws the answer from :meth:`probabilities`, and replies in
whichever form the request asks for:

* direct (structured ``SurveyAnswer``): the drawn option as JSON, except that on an
  ordinal question, with probability ``midpoint_bias``, it answers the scale's middle
  point instead (upper middle on an even scale): the central-tendency bias of forced
  choice, so direct answers are measurably pulled to the middle;
* free text (two-pass, first pass): a sentence quoting the drawn option's label, e.g.
  ``I would say "agree".``, with no bias;
* classification (``SurveyClassification``): the quoted label(s) found in the
  respondent's free text, or ``none of these`` / ``[]`` / ``null`` when there is none.

**The probabilities** (per question, from ``rules``)::

    rules = {"trust": {"default": {"agree": 2, "disagree": 1},          # weights, normalised
                       "by": {"demographics.age_band": {"18-24": {"agree": 1, "disagree": 3}}}}}

``P(option | persona)`` is the ``by`` table of the first listed attribute whose value
the persona has (an attribute key matches the persona's full key or its last dotted
part; the persona prompt lists at most 40 attributes, sorted by key), else ``default``, normalised to sum to 1. Without a rule: uniform over the
substantive options. Multiple choice: each weight is an independent probability of
picking that option (default 0.5). Ranking: Plackett–Luce with the weights. Numeric:
weights over the values (default uniform over the integers from ``min`` to ``max``).
Text questions get a fixed sentence. The draw for a respondent and question is
seeded by ``seed``, the respondent's attributes and the question id, so direct and
two-pass runs see the same underlying opinion. :meth:`expected_distribution` gives the
exact population distribution either mode should produce.

Use it as a :class:`~personae.llm.testing.ScriptedLLM` (:meth:`llm`) or as the test
server's reply function (``OpenAITestServer(reply=respondents.reply)``); requests that
are not survey prompts get ``None`` from :meth:`answer` (the server's default reply;
the LLM falls back to :class:`~personae.llm.testing.FakeLLM`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from personae.ids import content_hash
from personae.llm.base import LLMRequest, ResponseFormat
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.survey.elicit import NONE_LABEL
from personae.survey.instrument import Instrument, Question

__all__ = ["ScriptedRespondents"]

_ATTR = re.compile(r"^- ([^:\n]+): (.+)$", re.MULTILINE)
_QID = re.compile(r"Survey question (\S+) \(")
_QUOTED = re.compile(r'"([^"]+)"')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class ScriptedRespondents:
    """Scripted survey answers from persona attributes with known probabilities (a fake)."""

    def __init__(self, instrument: Instrument, rules: Mapping[str, Mapping[str, Any]] | None = None, *, seed: int = 0, midpoint_bias: float = 0.0) -> None:
        if not 0.0 <= midpoint_bias <= 1.0:
            raise ValueError("midpoint_bias must be in [0, 1]")
        self.instrument = instrument
        self.rules = {k: dict(v) for k, v in (rules or {}).items()}
        unknown = sorted(set(self.rules) - {q.id for q in instrument.questions})
        if unknown:
            raise ValueError(f"rules for questions the instrument does not have: {unknown}")
        self.seed = seed
        self.midpoint_bias = midpoint_bias

    # ---- the known probabilities ------------------------------------------------
    def _weights(self, question: Question, attributes: Mapping[str, Any]) -> dict[str, float]:
        rule = self.rules.get(question.id) or {}
        for attribute, table in (rule.get("by") or {}).items():
            value = _lookup(attributes, attribute)
            if value is not None and str(value) in table:
                return {str(k): float(v) for k, v in table[str(value)].items()}
        if rule.get("default"):
            return {str(k): float(v) for k, v in rule["default"].items()}
        if question.type == "numeric":
            lo, hi = int(question.min if question.min is not None else 0), int(question.max if question.max is not None else 10)
            return {str(v): 1.0 for v in range(lo, hi + 1)}
        if question.type == "multiple":
            return {o.code: 0.5 for o in question.scale}
        return {o.code: 1.0 for o in question.scale}

    def probabilities(self, question_id: str, attributes: Mapping[str, Any]) -> dict[str, float]:
        """``P(answer | persona)`` for a single-answer question (option code or numeric value → probability).

        For multiple choice: each option's independent probability of being picked. For
        rankings: the probability of each option being ranked first.
        """
        question = self.instrument.question(question_id)
        weights = self._weights(question, attributes)
        if question.type == "multiple":
            return {k: min(1.0, max(0.0, v)) for k, v in weights.items()}
        total = sum(weights.values())
        return {k: v / total for k, v in weights.items()}

    def expected_distribution(self, question_id: str, population: Iterable[Mapping[str, Any]], *, mode: str = "two_pass") -> dict[str, float]:
        """The exact answer distribution ``population`` (attribute maps) should give in ``mode``."""
        question = self.instrument.question(question_id)
        people = list(population)
        out: dict[str, float] = {}
        for attributes in people:
            probs = self.probabilities(question_id, attributes)
            if mode == "direct" and question.ordinal and self.midpoint_bias:
                mid = _midpoint(question)
                probs = {k: (1 - self.midpoint_bias) * v for k, v in probs.items()}
                probs[mid] = probs.get(mid, 0.0) + self.midpoint_bias
            for k, v in probs.items():
                out[k] = out.get(k, 0.0) + v / len(people)
        return out

    # ---- drawing ----------------------------------------------------------------
    def draw(self, question_id: str, attributes: Mapping[str, Any], *, direct: bool = False) -> list[str]:
        """The answer codes (or one numeric value as a string) this respondent gives."""
        question = self.instrument.question(question_id)
        if question.type == "text":
            return []
        key = sorted((str(k), str(v)) for k, v in attributes.items())
        rng = random.Random(content_hash([self.seed, key, question_id]))
        weights = self._weights(question, attributes)
        if question.type == "multiple":
            picked = [code for code, p in weights.items() if rng.random() < p]
            return picked[: question.max_choices] if question.max_choices else picked
        if question.type == "ranking":
            left, order = dict(weights), []
            while left:
                code = _choice(rng, left)
                order.append(code)
                del left[code]
            return order
        code = _choice(rng, weights)
        if direct and question.ordinal and self.midpoint_bias:
            bias = random.Random(content_hash([self.seed, key, question_id, "midpoint"]))
            if bias.random() < self.midpoint_bias:
                code = _midpoint(question)
        return [code]

    # ---- replying -----------------------------------------------------------------
    def answer(self, messages: Sequence[Mapping[str, Any]], schema_name: str | None) -> str | None:
        """The reply to a chat request, or ``None`` when it is not a survey prompt."""
        texts = [(str(m.get("role")), _text(m.get("content"))) for m in messages]
        if schema_name == "SurveyClassification":
            return self._classify("\n".join(t for _, t in texts))
        user = next((t for r, t in reversed(texts) if r == "user"), "")
        found = _QID.search(user)
        if found is None or found.group(1) not in {q.id for q in self.instrument.questions}:
            return None
        question = self.instrument.question(found.group(1))
        system = next((t for r, t in texts if r == "system"), "")
        attributes = {k.strip(): v.strip() for k, v in _ATTR.findall(system)}
        direct = schema_name == "SurveyAnswer"
        codes = self.draw(question.id, attributes, direct=direct)
        if question.type == "text":
            sentence = "I have mixed feelings about it, honestly."
            return json.dumps({"answer": sentence}) if direct else sentence
        if question.type == "numeric":
            number = float(codes[0])
            value: Any = int(number) if question.integer or number.is_integer() else number
            return json.dumps({"answer": value}) if direct else f"About {value}."
        labels = [question.option(c).label for c in codes]  # type: ignore[union-attr]
        if direct:
            return json.dumps({"answer": labels if question.type in ("multiple", "ranking") else labels[0]})
        if not labels:
            return "None of those, really."
        return "I would say " + ", then ".join(f'"{label}"' for label in labels) + "."

    def _classify(self, prompt: str) -> str:
        marker = "The respondent's answer: "
        start = prompt.find(marker)
        answer = prompt[start + len(marker):].split("\n", 1)[0] if start >= 0 else ""
        options = re.findall(r"^- (.+)$", prompt.split("The respondent's answer:")[0], re.MULTILINE)
        quoted = [q for q in _QUOTED.findall(answer.strip()[1:-1] if answer.startswith('"') else answer) if q in options]
        if "Give the number" in prompt:
            number = _NUMBER.search(answer)
            return json.dumps({"answer": float(number.group()) if number else None})
        if "Give the one option" in prompt:
            return json.dumps({"answer": quoted[0] if quoted else NONE_LABEL})
        return json.dumps({"answer": quoted})

    def reply(self, body: dict[str, Any]) -> str | None:
        """The test server's reply function (``OpenAITestServer(reply=...)``)."""
        response_format = body.get("response_format") or {}
        name = None
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            name = (response_format.get("json_schema") or {}).get("name")
        for tool in body.get("tools") or []:
            name = name or ((tool or {}).get("function") or {}).get("name")
        return self.answer(body.get("messages") or [], name)

    def llm(self, *, model: str = "scripted-respondents") -> ScriptedLLM:
        """A :class:`ScriptedLLM` answering survey prompts (anything else: :class:`FakeLLM` replies)."""
        fallback = FakeLLM(seed=self.seed)

        async def script(request: LLMRequest) -> Any:
            name = request.schema_name if request.response_format is not ResponseFormat.TEXT else None
            out = self.answer([m.model_dump() for m in request.messages], name)
            if out is None:
                return await fallback.complete(request)
            return out

        return ScriptedLLM(script, model=model)


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _lookup(attributes: Mapping[str, Any], name: str) -> Any:
    if name in attributes:
        return attributes[name]
    for key, value in attributes.items():
        if key.rsplit(".", 1)[-1] == name or name.rsplit(".", 1)[-1] == key:
            return value
    return None


def _choice(rng: random.Random, weights: Mapping[str, float]) -> str:
    codes = list(weights)
    return rng.choices(codes, weights=[weights[c] for c in codes], k=1)[0]


def _midpoint(question: Question) -> str:
    scale = question.scale
    return scale[len(scale) // 2].code
