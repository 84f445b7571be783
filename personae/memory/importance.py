"""How important a memory is, in [0, 1]: a cheap lexical heuristic, or a model rating.

The model rating follows Generative Agents: a 1–10 "poignancy" score asked of
the model (prompt ``memory_importance``), mapped linearly onto [0, 1].
"""

from __future__ import annotations

import math
import re

from pydantic import BaseModel, Field

from personae.ids import content_hash
from personae.llm.gateway import Gateway
from personae.prompts import PromptSet, render_with

__all__ = ["heuristic_importance", "ImportanceRating", "rate_importance"]

_TOKEN = re.compile(r"[\w']+", re.UNICODE)
_FIRST_PERSON = frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "i'm", "i've", "i'd", "i'll"})
_EMOTION_STEMS = (
    "love", "hate", "fear", "afraid", "angr", "happ", "worr", "excit", "upset", "proud",
    "anxi", "stress", "hurt", "lonel", "grie", "ashamed", "guilt", "thrill", "scare",
    "furious", "disappoint", "frustrat", "grateful", "devastat", "delight", "nervous",
    "embarrass", "jealous", "regret", "terrif", "heartbr", "miserab", "joy",
)
_EMOTION_WORDS = frozenset({"sad", "mad", "cry", "cried", "glad", "sorry"})
_DECISION_STEMS = (
    "decid", "decision", "plan", "promis", "agree", "refus", "commit", "quit", "choos",
    "resign", "marr", "divorc", "accept", "reject", "hire", "fired", "bought", "sold",
    "sign", "move", "moving", "goal", "intend",
)
_DECISION_WORDS = frozenset({"will", "won't", "gonna", "must", "chose", "buy", "sell", "never", "always"})
_LENGTH_SATURATION = math.log1p(60)  # ~60 words count as "long"


def _hits(words: list[str], exact: frozenset[str], stems: tuple[str, ...]) -> int:
    return sum(1 for w in words if w in exact or w.startswith(stems))


def heuristic_importance(text: str) -> float:
    """A cheap importance estimate in [0, 1] from length, first person, emotion and
    decision words, and numbers. Deterministic; no model call.

    Small talk ("Hi, how are you?") scores about 0.2; a first-person decision
    with feelings and figures ("I decided to quit my job; I was so stressed, 60
    hours a week") scores near 1.
    """
    words = [w.lower() for w in _TOKEN.findall(text)]
    if not words:
        return 0.0
    length = min(1.0, math.log1p(len(words)) / _LENGTH_SATURATION)
    first_person = 1.0 if any(w in _FIRST_PERSON for w in words) else 0.0
    emotion = min(1.0, _hits(words, _EMOTION_WORDS, _EMOTION_STEMS) / 2)
    decision = min(1.0, _hits(words, _DECISION_WORDS, _DECISION_STEMS) / 2)
    numbers = 1.0 if any(any(c.isdigit() for c in w) for w in words) else 0.0
    score = 0.1 + 0.25 * length + 0.15 * first_person + 0.25 * emotion + 0.2 * decision + 0.1 * numbers
    return round(min(1.0, max(0.0, score)), 4)


class ImportanceRating(BaseModel):
    """The importance model's reply."""

    rating: int = Field(ge=1, le=10, description="1 = purely mundane, 10 = extremely poignant")


async def rate_importance(
    gateway: Gateway,
    text: str,
    *,
    key: str,
    role: str = "importance",
    prompts: PromptSet | None = None,
) -> float:
    """Ask the model for a 1–10 rating of ``text`` and map it to [0, 1].

    ``key`` (e.g. the record id) seeds the call, so a rerun hits the gateway's cache.
    """
    messages = [{"role": "user", "content": render_with(prompts, "memory_importance", {"memory": text})}]
    seed = int(content_hash(["importance", key], length=8), 16)
    reply = await gateway.structured(messages, ImportanceRating, role=role, seed=seed, max_tokens=64)
    return round((reply.rating - 1) / 9, 4)
