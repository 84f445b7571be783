"""Reflection (Generative Agents): turn recent memories into a few higher-level insights.

The model sees the memories numbered 1..n and cites numbers, not record ids
(short numbers survive small models; 16-hex ids do not). The numbers are mapped
back to record ids here; citations that point nowhere are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel, Field

from personae.llm.gateway import Gateway
from personae.memory.records import MemoryRecord
from personae.prompts import PromptSet, render_with

__all__ = ["Insight", "ReflectionOutput", "generate_insights"]

log = logging.getLogger(__name__)


class Insight(BaseModel):
    """One insight and the numbers of the memories it rests on."""

    insight: str = Field(min_length=1, max_length=600)
    sources: list[int] = Field(default_factory=list, description="numbers of the memories this insight is based on")


class ReflectionOutput(BaseModel):
    """The reflection model's reply: 1–3 insights."""

    insights: list[Insight] = Field(min_length=1, max_length=3)


async def generate_insights(
    gateway: Gateway,
    memories: Sequence[MemoryRecord],
    *,
    agent: str,
    seed: int | None,
    role: str = "reflection",
    prompts: PromptSet | None = None,
) -> list[tuple[str, list[str]]]:
    """Ask the model for insights over ``memories``; return ``(text, cited record ids)`` pairs.

    Raises :class:`personae.errors.ModelOutputError` when the reply never validates.
    """
    numbered = [{"number": i + 1, "kind": m.kind, "text": m.text} for i, m in enumerate(memories)]
    prompt = render_with(prompts, "memory_reflection", {"agent": agent, "memories": numbered})
    reply = await gateway.structured([{"role": "user", "content": prompt}], ReflectionOutput, role=role, seed=seed)
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for item in reply.insights:
        text = " ".join(item.insight.split())
        if not text or text in seen:
            continue
        seen.add(text)
        cited = [memories[n - 1].id for n in dict.fromkeys(item.sources) if 1 <= n <= len(memories)]
        if len(cited) < len(set(item.sources)):
            log.debug("reflection for %s cited unknown memory numbers %s", agent, item.sources)
        out.append((text, cited))
    return out
