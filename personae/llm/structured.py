"""Structured output with a fallback chain: JSON schema → tool call → JSON mode + repair.

Never returns a silent ``None`` or ``{}``: either a validated model or a
:class:`~personae.errors.ModelOutputError` carrying the raw reply.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from personae.errors import ModelOutputError

__all__ = ["extract_json", "parse_structured", "schema_for"]

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_MAX_SPANS = 32


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to providers for ``model``."""
    return model.model_json_schema()


def extract_json(text: str) -> Any:
    """Parse JSON from a model reply, repairing the usual damage.

    Tries the whole text, then fenced blocks, then balanced ``{…}`` or ``[…]``
    spans from left to right, each also with trailing commas removed. Raises ``ValueError``.
    """
    candidates = itertools.chain([text.strip()], (m.strip() for m in _FENCE.findall(text)), _balanced_spans(text))
    for candidate in candidates:
        for variant in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return json.loads(variant)
            except (json.JSONDecodeError, ValueError):
                continue
    raise ValueError("no JSON value found in the reply")


def _next_opening(text: str, start: int) -> int:
    return min((i for i in (text.find("{", start), text.find("[", start)) if i >= 0), default=-1)


def _balanced_spans(text: str) -> Iterator[str]:
    """Balanced ``{…}``/``[…]`` spans left to right, so prose like ``[see below]`` before the JSON is skipped."""
    start = _next_opening(text, 0)
    for _ in range(_MAX_SPANS):
        if start < 0:
            return
        span = _first_balanced(text, start)
        if span is None:
            start = _next_opening(text, start + 1)
            continue
        yield span
        start = _next_opening(text, start + len(span))


def _first_balanced(text: str, start: int) -> str | None:
    opening = text[start]
    closing = "}" if opening == "{" else "]"
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def parse_structured(text: str, schema: type[T], *, model: str | None = None) -> T:
    """Validate a reply as ``schema``; raise :class:`ModelOutputError` with the raw reply."""
    try:
        data = extract_json(text)
    except ValueError as exc:
        raise ModelOutputError(f"reply is not JSON for {schema.__name__}: {exc}", raw=text, model=model) from None
    # Some models wrap the object once, e.g. {"output": {...}}.
    if isinstance(data, dict) and len(data) == 1 and set(schema.model_fields) - set(data):
        (only,) = data.values()
        if isinstance(only, dict) and not (set(data) & set(schema.model_fields)):
            data = only
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        raise ModelOutputError(
            f"reply does not match {schema.__name__}: field {field}: {first.get('msg')}", raw=text, model=model
        ) from None
