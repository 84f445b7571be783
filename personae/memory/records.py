"""What a memory is: the record stored per agent, and a record scored for a query."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from personae.ids import content_hash, stable_id

__all__ = ["MemoryKind", "MemoryRecord", "ScoredMemory", "Observation", "memory_id", "point_id"]

MemoryKind = Literal["observation", "reflection"]


def memory_id(agent_id: str, conversation_id: str | None, step: int, kind: str, text: str) -> str:
    """The stable id of a memory: re-observing the same content gives the same id."""
    return stable_id("mem", agent_id, conversation_id, step, kind, text)


def point_id(record_id: str) -> str:
    """The Qdrant point id (a UUID string) derived from a record id."""
    return str(uuid.UUID(hex=content_hash(record_id, length=32)))


class MemoryRecord(BaseModel):
    """One entry of an agent's memory stream (Generative Agents).

    ``step`` is a logical clock (a turn or event counter), never wall time, so
    recency — and with it every retrieval — is the same on a rerun.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    agent_id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    kind: MemoryKind = "observation"
    importance: float = Field(ge=0.0, le=1.0)
    step: int = Field(ge=0)
    conversation_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScoredMemory(BaseModel):
    """A retrieved memory with its score and the normalised parts that make it up.

    ``score = w_r·recency + w_i·importance + w_v·relevance``, where each part is
    min-max normalised over the candidates of that retrieval (as in Generative
    Agents), so the parts are in [0, 1] and comparable only within one call.
    """

    model_config = ConfigDict(frozen=True)

    record: MemoryRecord
    score: float
    recency: float
    importance: float
    relevance: float


class Observation(BaseModel):
    """Input for :meth:`AgentMemory.observe_many`: one memory to write.

    ``importance=None`` means "score it" (heuristic or the importance model).
    """

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    step: int = Field(ge=0)
    importance: float | None = Field(None, ge=0.0, le=1.0)
    conversation_id: str | None = None
    kind: MemoryKind = "observation"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def record_id(self) -> str:
        """The stable id the stored record will have."""
        return memory_id(self.agent_id, self.conversation_id, self.step, self.kind, self.text)
