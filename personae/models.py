"""The data model: personas, scenarios, utterances and conversations (pydantic v2).

Everything here serialises to one JSON object per line (see :mod:`personae.jsonl`),
and ids are derived from content or seeds so reruns resume and de-duplicate.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personae.ids import stable_id

__all__ = [
    "BigFive",
    "Persona",
    "Role",
    "Scenario",
    "Utterance",
    "EVENT_KIND",
    "Intervention",
    "is_event",
    "Participant",
    "StopReason",
    "ConversationStatus",
    "Conversation",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BigFive(_Model):
    """Big Five personality traits, each on a 0–1 scale."""

    openness: float = Field(0.5, ge=0.0, le=1.0)
    conscientiousness: float = Field(0.5, ge=0.0, le=1.0)
    extraversion: float = Field(0.5, ge=0.0, le=1.0)
    agreeableness: float = Field(0.5, ge=0.0, le=1.0)
    neuroticism: float = Field(0.5, ge=0.0, le=1.0)


class Persona(_Model):
    """A synthetic person.

    A typed core (demographics, Big Five, values, speaking style, goals), the three
    SPeCtrum layers (social identity, personal identity, life context), an open
    ``attributes`` map of taxonomy path → value, and a natural-language description.
    ``id`` is derived from the content when not given.
    """

    id: str = ""
    name: str = Field(min_length=1, max_length=200)
    age: int | None = Field(None, ge=0, le=120)
    gender: str | None = None
    location: str | None = None
    occupation: str | None = None
    education: str | None = None
    big_five: BigFive | None = None
    values: list[str] = Field(default_factory=list)
    beliefs: list[str] = Field(default_factory=list)
    speaking_style: str | None = None
    linguistic_habits: list[str] = Field(default_factory=list)
    goals: list[str] = Field(default_factory=list)
    social_identity: str | None = None
    personal_identity: str | None = None
    life_context: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @model_validator(mode="after")
    def _derive_id(self) -> Persona:
        if not self.id:
            self.id = stable_id("persona", self.model_dump(exclude={"id"}, mode="json"))
        return self

    def summary(self) -> str:
        """A one-line summary: name, age, occupation, location."""
        bits = [self.name]
        if self.age is not None:
            bits.append(str(self.age))
        for value in (self.occupation, self.location):
            if value:
                bits.append(value)
        return ", ".join(bits)


class Role(_Model):
    """A role in a scenario (e.g. ``client`` or ``responder``) and what it wants."""

    name: str = Field(min_length=1, max_length=100)
    goal: str = ""
    description: str = ""


class Scenario(_Model):
    """Where and why people talk: setting, roles with goals, opening, limits."""

    id: str = ""
    name: str = Field(min_length=1, max_length=200)
    setting: str = ""
    roles: list[Role] = Field(min_length=1)
    opening: str | None = None
    instruction: str | None = None
    constraints: list[str] = Field(default_factory=list)
    max_turns: int = Field(12, ge=1, le=1000)
    min_turns: int = Field(2, ge=0, le=1000)

    @field_validator("roles")
    @classmethod
    def _unique_roles(cls, roles: list[Role]) -> list[Role]:
        names = [r.name for r in roles]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"role names must be unique, repeated: {dupes}")
        return roles

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) exceeds max_turns ({self.max_turns})")
        if not self.id:
            self.id = stable_id("scenario", self.model_dump(exclude={"id"}, mode="json"))
        return self

    def role(self, name: str) -> Role:
        """The role called ``name``; raises ``KeyError`` naming the known roles."""
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(f"scenario {self.name!r} has no role {name!r}; roles: {[r.name for r in self.roles]}")


class Utterance(_Model):
    """One turn of the perspective-agnostic transcript."""

    id: str = ""
    speaker: str = Field(min_length=1, description="participant id of the speaker")
    turn: int = Field(ge=0)
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _derive_id(self) -> Utterance:
        if not self.id:
            self.id = stable_id("utt", self.speaker, self.turn, self.text)
        return self


EVENT_KIND = "event"
"""``Utterance.metadata["kind"]`` of an injected event (see :class:`Intervention`)."""


def is_event(utterance: Utterance | dict[str, Any]) -> bool:
    """Whether a transcript entry is an injected event rather than something a participant said."""
    metadata = utterance.get("metadata") if isinstance(utterance, dict) else utterance.metadata
    return (metadata or {}).get("kind") == EVENT_KIND


class Intervention(_Model):
    """An event an experiment schedules into running conversations.

    ``at_turn: 6`` injects the event once six participant turns have been taken (before
    the seventh; events themselves are not counted), optionally only in conversations of
    ``session``. The event goes into the transcript as an :class:`Utterance` whose
    ``speaker`` is ``source`` and whose ``metadata["kind"]`` is ``"event"``; the projection
    shows it to each recipient as a labelled event, and memory (when on) records it.
    ``to`` is ``"all"`` or a list of participant ids, persona ids or role names.
    """

    at_turn: int = Field(ge=0, le=1000, description="participant turns taken before the event (0: before anyone speaks)")
    session: int | None = Field(None, ge=1, description="only in conversations of this session (None: every session)")
    source: str = Field("moderator", min_length=1, max_length=100, pattern=r"^[^\s].*$", description="who announces it, e.g. moderator or narrator")
    text: str = Field(min_length=1, max_length=4000)
    to: str | list[str] = Field("all", description="'all', or participant ids, persona ids or role names")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the event's text is blank")
        return text.strip()

    @field_validator("to")
    @classmethod
    def _recipients(cls, to: str | list[str]) -> str | list[str]:
        if isinstance(to, str):
            if to != "all":
                raise ValueError(f"'to' is 'all' or a list of participant ids, persona ids or role names, got {to!r}")
            return to
        if not to or any(not str(t).strip() for t in to):
            raise ValueError("'to' lists at least one recipient, none of them blank (or is 'all')")
        return to

    def reaches(self, participant: Participant) -> bool:
        """Whether ``participant`` receives this event."""
        return self.to == "all" or bool({participant.id, participant.persona.id, participant.role} & set(self.to))


class Participant(_Model):
    """A persona taking part under a role; ``id`` is unique within the conversation."""

    id: str = ""
    persona: Persona
    role: str
    model: str | None = Field(None, description="name of a per-agent model in the gateway")

    @model_validator(mode="after")
    def _derive_id(self) -> Participant:
        if not self.id:
            self.id = self.persona.id
        return self


class StopReason(str, Enum):
    """Why a conversation ended."""

    MAX_TURNS = "max_turns"
    CLOSING = "closing"
    REPETITION = "repetition"
    EMPTY = "empty"
    DETECTOR = "detector"
    QUESTIONS_DONE = "questions_done"
    ERROR = "error"


class ConversationStatus(str, Enum):
    """Lifecycle of a conversation; see :data:`TRANSITIONS`."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"


TRANSITIONS: dict[ConversationStatus, frozenset[ConversationStatus]] = {
    ConversationStatus.PENDING: frozenset({ConversationStatus.RUNNING, ConversationStatus.FAILED}),
    ConversationStatus.RUNNING: frozenset({ConversationStatus.COMPLETE, ConversationStatus.FAILED}),
    ConversationStatus.COMPLETE: frozenset(),
    ConversationStatus.FAILED: frozenset({ConversationStatus.RUNNING}),
}


class Conversation(_Model):
    """A finished (or failed) conversation with its participants and transcript."""

    id: str
    scenario: Scenario
    participants: list[Participant] = Field(min_length=1)
    utterances: list[Utterance] = Field(default_factory=list)
    status: ConversationStatus = ConversationStatus.PENDING
    stop_reason: StopReason | None = None
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("participants")
    @classmethod
    def _unique_participants(cls, participants: list[Participant]) -> list[Participant]:
        ids = [p.id for p in participants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"participant ids must be unique, got {ids}")
        return participants

    def transition(self, new: ConversationStatus) -> None:
        """Move to ``new`` status, refusing transitions the lifecycle does not allow."""
        if new not in TRANSITIONS[self.status]:
            raise ValueError(f"conversation {self.id}: cannot go from {self.status.value} to {new.value}")
        self.status = new

    def participant(self, participant_id: str) -> Participant:
        """The participant with ``participant_id``."""
        for p in self.participants:
            if p.id == participant_id:
                return p
        raise KeyError(f"conversation {self.id} has no participant {participant_id!r}")
