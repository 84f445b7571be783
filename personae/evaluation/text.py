"""Small text and number helpers shared by the evaluation modules."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from personae.lexical import shingles as ngrams
from personae.lexical import words
from personae.models import Persona

__all__ = ["persona_profile", "words", "ngrams", "copied_share", "distinct_n", "gini", "finite_mean"]



def persona_profile(persona: Persona) -> str:
    """The persona as one text for embedding: description plus its typed facts."""
    parts: list[str] = []
    if persona.description:
        parts.append(persona.description)
    parts.append(persona.summary())
    for label, value in (
        ("gender", persona.gender),
        ("education", persona.education),
        ("speaking style", persona.speaking_style),
        ("social identity", persona.social_identity),
        ("personal identity", persona.personal_identity),
        ("life context", persona.life_context),
    ):
        if value:
            parts.append(f"{label}: {value}")
    for label, items in (
        ("values", persona.values),
        ("beliefs", persona.beliefs),
        ("goals", persona.goals),
        ("habits", persona.linguistic_habits),
    ):
        if items:
            parts.append(f"{label}: " + "; ".join(items))
    for key, value in sorted(persona.attributes.items()):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            parts.append(f"{key.rsplit('.', 1)[-1].replace('_', ' ')}: {value}")
    return "\n".join(parts)


def copied_share(tokens: Sequence[str], source: set[tuple[str, ...]], n: int) -> float:
    """Share of ``tokens`` inside an n-gram that also occurs in ``source`` (n-grams of another text).

    1.0 means every word sits in a run of ≥ ``n`` words copied from the source; a text
    shorter than ``n`` counts as copied only if it occurs whole (pass ``source`` built
    with ``n = len(tokens)`` for that). 0.0 for an empty text.
    """
    if not tokens:
        return 0.0
    covered = [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + n]) in source:
            covered[i : i + n] = [True] * n
    return sum(covered) / len(tokens)


def distinct_n(token_lists: Iterable[Sequence[str]], n: int) -> float:
    """Distinct-n: unique n-grams over all n-grams (NaN when there are none)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for tokens in token_lists:
        for i in range(len(tokens) - n + 1):
            seen.add(tuple(tokens[i : i + n]))
            total += 1
    return len(seen) / total if total else math.nan


def gini(values: Sequence[float]) -> float:
    """Gini coefficient of non-negative values: 0 = equal, →1 = one takes all (NaN if empty/zero)."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    total = sum(xs)
    if n == 0 or total <= 0:
        return math.nan
    weighted = sum((i + 1) * x for i, x in enumerate(xs))
    return (2.0 * weighted) / (n * total) - (n + 1.0) / n


def finite_mean(values: Iterable[float]) -> float:
    """Mean of the finite values (NaN if none)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else math.nan
