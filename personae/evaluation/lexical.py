"""Lexical measures for the evaluation: the word-level copy measures (:mod:`personae.lexical`) and prompt leakage."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

from personae.lexical import COPY_SHARE, MIN_WORDS, copies, lcs_length, lcs_share, shingles, words

__all__ = [
    "MIN_WORDS",
    "COPY_SHARE",
    "lcs_length",
    "lcs_share",
    "copies",
    "shingles",
    "prompt_fragments",
    "leaks_prompt",
]

_PROMPT_FILES = ("persona_system", "persona_opening", "persona_continue", "persona_revise", "persona_concat")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


@functools.lru_cache(maxsize=8)
def prompt_fragments(prompts_dir: str | None = None, n: int = 5) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the persona prompts' fixed wording (template text outside ``{{ }}``/``{% %}``).

    A persona turn sharing one of them repeats its instructions ("In this conversation
    you are the customer...") instead of speaking. ``prompts_dir`` defaults to the
    packaged templates.
    """
    from personae.prompts import PROMPTS_DIR

    folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    found: set[tuple[str, ...]] = set()
    for name in _PROMPT_FILES:
        path = folder / f"{name}.j2"
        if not path.exists():
            continue
        for literal in _JINJA.split(path.read_text(encoding="utf-8")):
            found |= shingles(words(literal), n)
    return frozenset(found)


def leaks_prompt(tokens: Sequence[str], fragments: frozenset[tuple[str, ...]], n: int = 5) -> bool:
    """Whether ``tokens`` contain one of the prompt's fixed ``n``-word fragments."""
    return any(tuple(tokens[i : i + n]) in fragments for i in range(len(tokens) - n + 1))
