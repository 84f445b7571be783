"""The orchestrator node: who speaks next.

Policies: ``alternate`` (two people), ``round_robin``, ``random`` (seeded, never the
same speaker twice in a row), ``moderator`` (an LLM picks among the others, falling
back to round robin after a bounded number of unusable replies), or any callable
``policy(view) -> participant id`` (sync or async).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, create_model

from personae.errors import ConfigError, ModelOutputError
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Participant, Scenario, Utterance, is_event
from personae.nodes.state import (
    DialogueState,
    RunContext,
    derive_seed,
    participants_of,
    run_context,
    scenario_of,
    speaker_labels,
    transcript_of,
)
from personae.prompts import PromptSet, render_with

__all__ = [
    "TurnPolicyName",
    "TurnView",
    "CustomPolicy",
    "pick_opener",
    "alternate",
    "round_robin",
    "random_no_repeat",
    "make_orchestrator_node",
]

log = logging.getLogger(__name__)

TurnPolicyName = Literal["alternate", "round_robin", "random", "moderator"]


@dataclass(frozen=True)
class TurnView:
    """What a turn policy sees: the conversation so far and who takes part."""

    transcript: Sequence[Utterance]
    participants: Sequence[Participant]
    scenario: Scenario
    conversation_id: str
    seed: int

    @property
    def turn(self) -> int:
        """Index of the turn about to be taken (injected events hold a transcript index too)."""
        return len(self.transcript)

    @property
    def last_speaker(self) -> str | None:
        """Participant id of the latest speaker, if any (injected events are not speakers)."""
        return next((u.speaker for u in reversed(self.transcript) if not is_event(u)), None)


CustomPolicy = Callable[[TurnView], "str | Awaitable[str]"]


def pick_opener(participants: Sequence[Participant], scenario: Scenario, opener: str | None = None) -> Participant:
    """Who speaks first: the participant whose id or role is ``opener``, else the holder
    of the scenario's first role, else the first participant."""
    if opener is not None:
        for p in participants:
            if opener in (p.id, p.role):
                return p
        raise ConfigError(
            "the opener matches no participant",
            field="opener",
            expected=f"a participant id or role among {sorted({p.role for p in participants})}",
            got=opener,
        )
    first_role = scenario.roles[0].name
    return next((p for p in participants if p.role == first_role), participants[0])


def alternate(view: TurnView) -> str:
    """The other of exactly two participants."""
    if len(view.participants) != 2:
        raise ConfigError(
            "the 'alternate' turn policy needs exactly two participants",
            field="turn_policy",
            expected="round_robin, random or moderator for groups",
            got=len(view.participants),
        )
    a, b = view.participants
    return b.id if view.last_speaker == a.id else a.id


def round_robin(view: TurnView) -> str:
    """The participant after the latest speaker, in participant order."""
    ids = [p.id for p in view.participants]
    if view.last_speaker not in ids:
        return ids[0]
    return ids[(ids.index(view.last_speaker) + 1) % len(ids)]


def random_no_repeat(view: TurnView) -> str:
    """A seeded random pick among everyone but the latest speaker."""
    options = [p.id for p in view.participants if p.id != view.last_speaker] or [view.participants[0].id]
    rng = random.Random(derive_seed(view.seed, view.conversation_id, view.turn, "random"))
    return rng.choice(options)


_BUILTIN: dict[str, Callable[[TurnView], str]] = {
    "alternate": alternate,
    "round_robin": round_robin,
    "random": random_no_repeat,
}


def _choice_schema(labels: Sequence[str]) -> type[BaseModel]:
    return create_model(
        "SpeakerChoice",
        speaker=(Literal[tuple(labels)], Field(description="name of who should speak next")),  # type: ignore[valid-type]
        reason=(str, Field("", description="one short sentence why")),
    )


def make_orchestrator_node(
    policy: TurnPolicyName | CustomPolicy = "alternate",
    *,
    gateway: Gateway | None = None,
    opener: str | None = None,
    prompts: PromptSet | None = None,
    moderator_attempts: int = 2,
    context_turns: int = 8,
    role: str = "moderator",
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node setting ``state["next_speaker"]`` (and ``speaker_choice``: how it chose).

    Built-in policies give the first turn to :func:`pick_opener`; a custom callable
    decides every turn itself. ``moderator`` needs ``gateway``.
    """
    if isinstance(policy, str) and policy not in (*_BUILTIN, "moderator"):
        raise ConfigError("unknown turn policy", field="turn_policy", expected="alternate | round_robin | random | moderator | a callable", got=policy)
    if policy == "moderator" and gateway is None:
        raise ConfigError("the moderator turn policy needs a gateway", field="turn_policy")
    if moderator_attempts < 1:
        raise ConfigError("moderator_attempts must be at least 1", field="moderator_attempts", got=moderator_attempts)

    async def orchestrator(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        if state.get("stop_reason"):
            return {}
        ctx = run_context(runtime)
        view = TurnView(transcript_of(state), participants_of(state), scenario_of(state), ctx.conversation_id, ctx.seed)
        if not view.participants:
            raise ConfigError("a conversation needs participants", field="participants")
        if callable(policy):
            chosen = policy(view)
            if asyncio.iscoroutine(chosen) or isinstance(chosen, Awaitable):
                chosen = await chosen
            return {"next_speaker": _resolve(view, str(chosen)), "speaker_choice": {"policy": "custom"}}
        if view.last_speaker is None:  # nobody has spoken yet (an event may have opened the conversation)
            first = pick_opener(view.participants, view.scenario, opener)
            return {"next_speaker": first.id, "speaker_choice": {"policy": policy, "opener": True}}
        if policy == "moderator":
            return await _moderate(view)
        return {"next_speaker": _BUILTIN[policy](view), "speaker_choice": {"policy": policy}}

    async def _moderate(view: TurnView) -> dict[str, Any]:
        labels = speaker_labels(view.participants)
        options = [p for p in view.participants if p.id != view.last_speaker] or list(view.participants)
        if len(options) == 1:
            return {"next_speaker": options[0].id, "speaker_choice": {"policy": "moderator", "only_option": True}}
        schema = _choice_schema([labels[p.id] for p in options])
        roles = {p.id: p.role for p in view.participants}
        content = render_with(
            prompts,
            "moderator_pick",
            {
                "scenario": view.scenario.model_dump(mode="json"),
                "options": [{"name": labels[p.id], "role": p.role, "summary": p.persona.summary()} for p in options],
                "last": labels.get(view.last_speaker or "", None),
                "lines": [
                    {"label": labels.get(u.speaker, u.speaker), "role": roles.get(u.speaker, "event" if is_event(u) else ""), "text": u.text}
                    for u in view.transcript[-context_turns:]
                ],
            },
        )
        by_label = {labels[p.id]: p.id for p in options}
        for attempt in range(moderator_attempts):
            seed = derive_seed(view.seed, view.conversation_id, view.turn, attempt, "moderator")
            try:
                choice = await gateway.structured([Message(role="user", content=content)], schema, role=role, seed=seed)
            except ModelOutputError as exc:
                log.info("moderator reply unusable (attempt %d/%d): %s", attempt + 1, moderator_attempts, exc.message)
                continue
            return {
                "next_speaker": by_label[choice.speaker],
                "speaker_choice": {"policy": "moderator", "reason": choice.reason, "attempts": attempt + 1},
            }
        log.warning("moderator failed %d times in %s turn %d; falling back to round robin", moderator_attempts, view.conversation_id, view.turn)
        return {"next_speaker": round_robin(view), "speaker_choice": {"policy": "moderator", "fallback": "round_robin"}}

    orchestrator.__name__ = "orchestrator"
    return orchestrator


def _resolve(view: TurnView, chosen: str) -> str:
    labels = speaker_labels(view.participants)
    for p in view.participants:
        if chosen in (p.id, labels[p.id]):
            return p.id
    raise ConfigError(
        "the custom turn policy returned an unknown participant",
        field="turn_policy",
        expected=f"one of {[p.id for p in view.participants]}",
        got=chosen,
    )
