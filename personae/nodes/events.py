"""The event node: scheduled interventions injected into a running conversation.

An :class:`~personae.models.Intervention` becomes a transcript entry (an
:class:`~personae.models.Utterance` with ``metadata["kind"] == "event"``) once the
conversation has taken ``at_turn`` participant turns. Whether an event is due is a
function of the state alone (participant turns taken, event ids already in the
transcript) and the run's session, and its id derives from the conversation id and the
event's place in the schedule: a resumed or re-run step writes the same entry again,
which the transcript reducer merges by id, so every event is injected exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langgraph.runtime import Runtime

from personae.ids import stable_id
from personae.models import EVENT_KIND, Intervention, Participant, Utterance, is_event
from personae.nodes.state import DialogueState, RunContext, participants_of, run_context

__all__ = ["make_event_node", "due_events", "event_id", "spoken", "sees"]

log = logging.getLogger(__name__)


def event_id(conversation_id: str, index: int) -> str:
    """The transcript id of the schedule's ``index``-th event in ``conversation_id``."""
    return stable_id("event", conversation_id, index)


def spoken(transcript: Sequence[Utterance]) -> list[Utterance]:
    """The transcript without injected events: what participants said."""
    return [u for u in transcript if not is_event(u)]


def sees(utterance: Utterance, participant_id: str) -> bool:
    """Whether ``participant_id`` sees ``utterance`` (an event may be addressed to some participants only)."""
    if not is_event(utterance):
        return True
    to = utterance.metadata.get("to")
    return to is None or participant_id in to


def due_events(
    events: Sequence[Intervention],
    transcript: Sequence[dict[str, Any]],
    participants: Sequence[Participant],
    *,
    conversation_id: str,
    session: int,
) -> list[Utterance]:
    """The events due now and not yet in ``transcript``, as transcript entries (numbered after it)."""
    present = {u.get("id") for u in transcript}
    taken = sum(1 for u in transcript if not is_event(u))
    out: list[Utterance] = []
    for index, event in enumerate(events):
        eid = event_id(conversation_id, index)
        if eid in present or event.at_turn > taken or event.session not in (None, session):
            continue
        recipients = None if event.to == "all" else [p.id for p in participants if event.reaches(p)]
        if recipients == []:
            log.warning("event %d of %s reaches no participant (to=%s)", index, conversation_id, event.to)
        out.append(
            Utterance(
                id=eid,
                speaker=event.source,
                turn=len(transcript) + len(out),
                text=event.text,
                metadata={"kind": EVENT_KIND, "source": event.source, "to": recipients, "event": index, "at_turn": event.at_turn},
            )
        )
    return out


def make_event_node(events: Sequence[Intervention]) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node writing the events of ``events`` that are due into the transcript.

    Place it before the orchestrator (at the start, and after each turn while the
    conversation goes on), so the next speaker's projection and the turn policy see the
    event; the memory node observes it with the next turn.
    """
    schedule = list(events)

    async def events_node(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        if state.get("stop_reason"):
            return {}
        ctx = run_context(runtime)
        new = due_events(
            schedule, state.get("transcript") or [], participants_of(state),
            conversation_id=ctx.conversation_id, session=ctx.session,
        )
        return {"transcript": [u.model_dump(mode="json") for u in new]} if new else {}

    events_node.__name__ = "events"
    return events_node
