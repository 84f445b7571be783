"""Small text helpers shared by the rule-based checks of the critic and termination nodes."""

from __future__ import annotations

import re

__all__ = ["normalise", "valid_regex"]


def normalise(text: str) -> str:
    """Lower-case words only, single-spaced: texts differing in case or punctuation compare equal."""
    return " ".join(re.findall(r"\w+", text.lower()))


def valid_regex(pattern: str) -> str:
    """``pattern`` if it compiles; a ``ValueError`` naming it otherwise (for pydantic validators)."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return pattern
