"""Shared builders for the graph and node tests (not a test module)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from personae.llm.base import LLMRequest, ResponseFormat
from personae.models import Participant, Persona, Role, Scenario
from personae.nodes.state import RunContext, merge_by_id

SCENARIO = Scenario(
    name="Router support",
    setting="A phone call to an internet provider.",
    roles=[Role(name="client", goal="get the router working"), Role(name="responder", goal="solve the problem politely")],
    max_turns=8,
    min_turns=2,
)


def persona(name: str, **extra: Any) -> Persona:
    return Persona(name=name, occupation="teacher", description=f"{name} is a careful person.", **extra)


def people(*names: str, roles: tuple[str, ...] = ("client", "responder")) -> list[Participant]:
    return [Participant(persona=persona(n), role=roles[i % len(roles)]) for i, n in enumerate(names)]


def runtime(conversation_id: str = "conv-test", seed: int = 7) -> SimpleNamespace:
    """What LangGraph passes as ``runtime``: only ``.context`` is used by the nodes."""
    return SimpleNamespace(context=RunContext(conversation_id=conversation_id, seed=seed))


def apply(state: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Apply a node's partial update the way the graph would (transcript merged by id)."""
    out = dict(state)
    for key, value in update.items():
        out[key] = merge_by_id(out.get(key), value) if key == "transcript" else value
    return out


def is_structured(request: LLMRequest) -> bool:
    return request.response_format is not ResponseFormat.TEXT


def schema_name(request: LLMRequest) -> str | None:
    return request.schema_name if is_structured(request) else None


def as_json(value: dict[str, Any]) -> str:
    return json.dumps(value)
