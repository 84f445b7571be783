"""Structured output with a fallback chain: JSON schema → tool call → JSON mode + repair.

Never returns a silent ``None`` or ``{}``: either a validated model or a
:class:`~personae.errors.ModelOutputError` carrying the raw reply.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from personae.errors import ModelOutputError

__all__ = ["extract_json", "parse_structured", "schema_for"]

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to providers for ``model``."""
    return model.model_json_schema()


def extract_json(text: str) -> Any:
    """Parse JSON from a model reply, repairing the usual damage.

    Tries the whole text, then fenced blocks, then the first balanced ``{…}`` or
    ``[…]``, each also with trailing commas removed. Raises ``ValueError``.
    """
    candidates: list[str] = [text.strip()]
    candidates += [m.strip() for m in _FENCE.findall(text)]
    balanced = _first_balanced(text)
    if balanced:
        candidates.append(balanced)
    for candidate in candidates:
        for variant in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
            try:
                return json.loads(variant)
            except (json.JSONDecodeError, ValueError):
                continue
    raise ValueError("no JSON value found in the reply")


def _first_balanced(text: str) -> str | None:
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
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
