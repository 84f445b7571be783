"""The memory node and retriever: conversations written into each agent's memory stream.

Every committed utterance is observed by every participant (their own turns as "I
said…"), on an agent-wide logical clock: ``step = memory_base[agent] + turn``, where
the base (the agent's latest step + 1 when the conversation began) is kept in state,
so a resumed conversation writes the same ids and memories are never duplicated.
Reflections run when the accumulated importance passes the threshold. The retriever
feeds the persona node with the best memories that are not already in its window.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from langgraph.runtime import Runtime

from personae.errors import ModelOutputError
from personae.llm.gateway import Gateway
from personae.memory import DEFAULT_REFLECTION_THRESHOLD, AgentMemory, Observation
from personae.models import Participant, Utterance, is_event
from personae.nodes.events import sees
from personae.nodes.persona import Retriever
from personae.nodes.state import (
    DialogueState,
    RunContext,
    derive_seed,
    participants_of,
    run_context,
    speaker_labels,
    transcript_of,
)
from personae.prompts import PromptSet, render_with

__all__ = ["memory_bases", "reflect_all", "make_memory_retriever", "make_memory_node"]

log = logging.getLogger(__name__)


async def memory_bases(memory: AgentMemory, participants: Sequence[Participant], *, start: int = 0) -> dict[str, int]:
    """Each participant's clock base for a new conversation: its agent's latest step + 1, or ``start``
    (the step at which a session starts in simulated time) if that is later."""
    return {p.persona.id: max(await memory.last_step(p.persona.id) + 1, start) for p in participants}


async def reflect_all(
    memory: AgentMemory,
    gateway: Gateway,
    participants: Sequence[Participant],
    *,
    start: int,
    seed: int,
    conversation_id: str,
) -> int:
    """Let every participant reflect on what it observed since its last reflection (before a session).

    Each reflects at its next clock step (``start`` or later) whatever importance has
    accumulated; one with nothing new to reflect on is skipped, so calling this again
    after a kill adds nothing. An unusable reply is logged and skipped. Returns how many
    insights were stored.
    """
    labels = speaker_labels(participants)
    bases = await memory_bases(memory, participants, start=start)
    stored = 0
    for p in participants:
        now = bases[p.persona.id]
        try:
            stored += len(await memory.reflect_if_due(
                p.persona.id, gateway, threshold=1e-9, now_step=now,
                seed=derive_seed(seed, conversation_id, now, p.persona.id, "session-reflect"),
                conversation_id=conversation_id, agent_name=labels[p.id],
            ))
        except ModelOutputError as exc:
            log.warning("reflection of %s before %s skipped: %s", p.persona.id, conversation_id, exc.message)
    return stored


def make_memory_retriever(memory: AgentMemory, *, k: int = 4) -> Retriever:
    """A :class:`Retriever` over ``memory`` returning the ``k`` best memory texts."""

    async def retrieve(
        agent_id: str, query: str, *, now_step: int | None = None, conversation_id: str | None = None, skip_from_step: int | None = None
    ) -> list[str]:
        extra = 0 if skip_from_step is None or now_step is None else max(0, now_step - skip_from_step)
        hide = (conversation_id, now_step) if conversation_id is not None and now_step is not None else None
        scored = await memory.retrieve(agent_id, query, k=k + extra, now_step=now_step, hide_from=hide)
        texts = [
            s.record.text
            for s in scored
            if skip_from_step is None or s.record.conversation_id != conversation_id or s.record.step < skip_from_step
        ]
        return texts[:k]

    return retrieve


def make_memory_node(
    memory: AgentMemory,
    *,
    gateway: Gateway | None = None,
    reflect: bool = True,
    reflect_threshold: float = DEFAULT_REFLECTION_THRESHOLD,
    prompts: PromptSet | None = None,
    observers: Collection[str] | None = None,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node observing new transcript entries into every participant's memory.

    ``observers`` limits who remembers to these participant ids (e.g. the persona of a
    chat, not its human partner). An injected event is remembered by the participants it
    reaches, as the ``memory_event`` template words it.

    Place it after utterances are committed. It writes ``observed`` (how many
    transcript entries are stored). The clock base should come with the initial
    state (:func:`personae.graphs.runner.job_state` puts it there, so it is
    checkpointed before anything is observed); when it is missing, the node computes
    it on first use, which is exact unless the process dies inside that first call. With
    ``reflect`` and a ``gateway`` it lets each agent reflect when due; an unusable
    reflection reply is logged and skipped.
    """

    async def memory_node(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        ctx = run_context(runtime)
        everyone = participants_of(state)
        participants = [p for p in everyone if observers is None or p.id in observers]
        update: dict[str, Any] = {}
        bases = state.get("memory_base")
        if not bases:
            bases = update["memory_base"] = await memory_bases(memory, participants)
        transcript = transcript_of(state)
        start = int(state.get("observed") or 0)
        new = [u for u in transcript[start:] if u.text.strip()]
        labels = speaker_labels(everyone)
        roles = {p.id: p.role for p in everyone}
        scenario_name = (state.get("scenario") or {}).get("name", "")
        def text_of(u: Utterance, p: Participant) -> str:
            if is_event(u):
                return render_with(prompts, "memory_event", {"source": u.speaker, "scenario": scenario_name, "text": u.text})
            return render_with(
                prompts,
                "memory_observation",
                {
                    "own": u.speaker == p.id,
                    "speaker": labels.get(u.speaker, u.speaker),
                    "role": roles.get(u.speaker, ""),
                    "scenario": scenario_name,
                    "text": u.text,
                },
            )

        observations = [
            Observation(
                agent_id=p.persona.id,
                text=text_of(u, p),
                step=bases.get(p.persona.id, 0) + u.turn,
                conversation_id=ctx.conversation_id,
                metadata={
                    "speaker": u.speaker, "turn": u.turn, **({"kind": "event"} if is_event(u) else {}),
                    **({"session": ctx.session, "group": ctx.group} if ctx.group is not None else {}),
                },
            )
            for u in new
            for p in participants
            if sees(u, p.id)
        ]
        if observations:
            await memory.observe_many(observations)
        update["observed"] = len(transcript)
        if reflect and gateway is not None and new:
            for p in participants:
                now = bases.get(p.persona.id, 0) + transcript[-1].turn
                try:
                    await memory.reflect_if_due(
                        p.persona.id,
                        gateway,
                        threshold=reflect_threshold,
                        now_step=now,
                        seed=derive_seed(ctx.seed, ctx.conversation_id, now, p.persona.id, "reflect"),
                        conversation_id=ctx.conversation_id,
                        agent_name=labels[p.id],
                    )
                except ModelOutputError as exc:
                    log.warning("reflection of %s skipped: %s", p.persona.id, exc.message)
        return update

    memory_node.__name__ = "memory"
    return memory_node
