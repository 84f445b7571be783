"""Graph configuration: which prebuilt graph, how turns are taken, critic, termination, memory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from personae.errors import ConfigError
from personae.models import Intervention, Participant, Persona, Scenario
from personae.nodes.critic import CriticConfig
from personae.nodes.orchestrator import TurnPolicyName
from personae.nodes.termination import TerminationConfig

__all__ = ["GraphKind", "MemoryConfig", "GraphConfig", "CriticConfig", "TerminationConfig", "validate_conversation"]

GraphKind = Literal["dyad", "group", "interview"]

_DEFAULT_POLICY: dict[str, TurnPolicyName] = {"dyad": "alternate", "group": "moderator", "interview": "alternate"}


class MemoryConfig(BaseModel):
    """Agent memory in graphs: observe every turn, retrieve ``k`` memories per turn, reflect."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    k: int = Field(4, ge=1, le=50, description="memories retrieved into each persona prompt")
    reflect: bool = True
    reflect_threshold: float = Field(4.0, gt=0.0, description="accumulated importance that triggers a reflection")


class GraphConfig(BaseModel):
    """How a conversation is simulated. Validated up front; every field has a default."""

    model_config = ConfigDict(extra="forbid")

    kind: GraphKind = "dyad"
    projection: Literal["ecp", "concat"] = Field("ecp", description="egocentric projection, or the concatenation baseline")
    turn_policy: TurnPolicyName | None = Field(None, description="None: alternate (dyad, interview), moderator (group)")
    opener: str | None = Field(None, description="role or participant id that speaks first; None: the scenario's first role")
    window: int | None = Field(12, ge=1, description="utterances shown verbatim; older ones reach agents through memory")
    group_size: int = Field(4, ge=2, le=50, description="participants per group conversation")
    questions: list[str] = Field(default_factory=list, description="interview questions, in order")
    phrase_questions: bool = Field(False, description="let the interviewer's model word each question")
    interviewer: Persona | None = Field(None, description="the interviewer persona; None: a neutral default")
    critic: CriticConfig = Field(default_factory=CriticConfig)
    termination: TerminationConfig = Field(default_factory=TerminationConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(200, ge=1, le=32_000)
    moderator_attempts: int = Field(2, ge=1, le=10)
    durability: Literal["sync", "async", "exit"] = Field("sync", description="when checkpoints are written (LangGraph durability)")
    events: list[Intervention] = Field(default_factory=list, description="interventions injected into dyad and group conversations")

    @model_serializer(mode="wrap")
    def _without_empty_events(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a config without events dumps as before events existed, so conversation ids (derived
        # from the dumped config) stay the same and earlier runs still resume and skip what is done
        data = handler(self)
        if isinstance(data, dict) and not self.events:
            data.pop("events", None)
        return data

    @model_validator(mode="after")
    def _check(self) -> GraphConfig:
        if self.kind == "interview" and not self.questions:
            raise ValueError("an interview graph needs at least one question in 'questions'")
        if self.kind == "interview" and self.turn_policy not in (None, "alternate"):
            raise ValueError("an interview alternates between interviewer and respondent; leave turn_policy unset")
        if self.kind == "group" and self.turn_policy == "alternate":
            raise ValueError("'alternate' needs exactly two participants; use round_robin, random or moderator for groups")
        if self.events and self.kind == "interview":
            raise ValueError("events are injected into dyad and group conversations; an interview asks its questions only")
        if any(not q.strip() for q in self.questions):
            raise ValueError("interview questions must not be empty")
        return self

    @property
    def policy(self) -> TurnPolicyName:
        """The turn policy in effect (the kind's default when unset)."""
        return self.turn_policy or _DEFAULT_POLICY[self.kind]

    def default_interviewer(self) -> Persona:
        """The interviewer persona of interview graphs."""
        return self.interviewer or Persona(
            name="Interviewer",
            occupation="survey interviewer",
            description="A neutral, friendly interviewer who asks one question at a time and does not share opinions.",
        )


def validate_conversation(config: GraphConfig, scenario: Scenario, participants: Sequence[Participant]) -> None:
    """Check that ``participants`` fit ``config`` and ``scenario``; raise :class:`ConfigError` naming the problem."""
    n = len(participants)
    ids = [p.id for p in participants]
    if len(set(ids)) != n:
        raise ConfigError("participant ids must be unique", field="participants", got=ids)
    roles = {r.name for r in scenario.roles}
    unknown = sorted({p.role for p in participants} - roles)
    if unknown:
        raise ConfigError(f"participants have roles the scenario {scenario.name!r} does not define", field="participants.role", expected=f"one of {sorted(roles)}", got=unknown)
    if config.kind in ("dyad", "interview") and n != 2:
        raise ConfigError(f"a {config.kind} has exactly two participants", field="participants", expected="2", got=n)
    if config.kind == "group" and n < 2:
        raise ConfigError("a group needs at least two participants", field="participants", expected=">= 2", got=n)
    if config.policy == "alternate" and n != 2:
        raise ConfigError("the 'alternate' turn policy needs exactly two participants", field="turn_policy", got=n)
    clash = sorted({e.source for e in config.events} & set(ids))
    if clash:
        raise ConfigError("an event's source is also a participant id", field="events.source", expected="a name no participant has as id, e.g. moderator", got=clash)
    if config.opener is not None and not any(config.opener in (p.id, p.role) for p in participants):
        raise ConfigError("the opener matches no participant", field="opener", expected=f"a role among {sorted(roles)} or a participant id", got=config.opener)
