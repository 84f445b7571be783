"""The dialogue state every simulation graph shares, and the run context nodes receive.

State holds data only (plain JSON-able dicts and lists): it is what the LangGraph
checkpointer serialises, so a killed conversation resumes exactly where it stopped.
The transcript is merged by utterance id: a node that re-runs after a crash or a
retry replaces its earlier utterance instead of appending a duplicate.

The transcript, participants and scenario are LangGraph ``DeltaChannel``s: a
checkpoint stores only what a step wrote, not the whole value again, so the bytes
checkpointed per conversation grow with its length instead of its length squared,
and the static personas and scenario are stored once per conversation, not once per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langgraph.channels import DeltaChannel
from pydantic import BaseModel

from personae.ids import content_hash, stable_id
from personae.models import Participant, Scenario, Utterance

__all__ = [
    "RunContext",
    "DialogueState",
    "merge_by_id",
    "initial_state",
    "derive_seed",
    "utterance_id",
    "run_context",
    "transcript_of",
    "participants_of",
    "scenario_of",
    "participant_by_id",
    "speaker_labels",
]


@dataclass(frozen=True)
class RunContext:
    """Per-run values handed to every node through LangGraph's ``Runtime.context``."""

    conversation_id: str = "conversation"
    seed: int = 0
    session: int = 1
    group: str | None = None


def _as_dict(item: Utterance | dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, BaseModel):
        return item.model_dump(mode="json")
    return dict(item)


def merge_by_id(
    left: Sequence[Utterance | dict[str, Any]] | None,
    right: Sequence[Utterance | dict[str, Any]] | Utterance | dict[str, Any] | None,
) -> list[dict[str, Any]]:
    """Reducer for the transcript: append new utterances, replace ones whose id is known.

    Items may be :class:`~personae.models.Utterance` models or their dict form; the
    result is always dicts (what the checkpointer stores), ordered by first appearance.
    """
    merged = [_as_dict(u) for u in (left or [])]
    if right is None:
        return merged
    if isinstance(right, (BaseModel, dict)):
        right = [right]
    index = {u["id"]: i for i, u in enumerate(merged)}
    for item in right:
        utt = _as_dict(item)
        if "id" not in utt or not utt["id"]:
            utt = Utterance.model_validate(utt).model_dump(mode="json")
        if utt["id"] in index:
            merged[index[utt["id"]]] = utt
        else:
            index[utt["id"]] = len(merged)
            merged.append(utt)
    return merged


def _merge_writes(state: list[dict[str, Any]], writes: Sequence[Any]) -> list[dict[str, Any]]:
    """``merge_by_id`` over a batch of transcript writes (replaying them in any grouping gives the same list)."""
    for write in writes:
        state = merge_by_id(state, write)
    return state


def _last_write(state: Any, writes: Sequence[Any]) -> Any:
    """The newest write wins: participants and scenario are set once, at the start."""
    return writes[-1] if writes else state


class DialogueState(TypedDict, total=False):
    """The graph state of one conversation (all values JSON-able).

    Keys:
        transcript: committed utterances (dicts of :class:`Utterance`), merged by id.
        participants: :class:`Participant` dicts, in speaking-order for round robin.
        scenario: the :class:`Scenario` dict.
        next_speaker: participant id chosen by the orchestrator.
        speaker_choice: how the orchestrator chose (policy, fallback, reason).
        draft: the utterance under critique: speaker, turn, text, attempt, feedback, history.
        stop_reason: a :class:`~personae.models.StopReason` value once the conversation ends.
        stop_detail: a human-readable explanation of the stop.
        observed: how many transcript items the memory node has already written.
        memory_base: agent id → logical-clock base of this conversation's memories.
        questions: interview questions (interview graphs only).
        interviewer: participant id of the interviewer (interview graphs only).
        qa: question/answer pairs (interview graphs only).
        extracted: the interview answers extracted into the answer schema, as a dict.
        extract_error: why extraction failed, if it did.
    """

    transcript: Annotated[list[dict[str, Any]], DeltaChannel(_merge_writes)]
    participants: Annotated[list[dict[str, Any]], DeltaChannel(_last_write)]
    scenario: Annotated[dict[str, Any], DeltaChannel(_last_write)]
    next_speaker: str | None
    speaker_choice: dict[str, Any] | None
    draft: dict[str, Any] | None
    stop_reason: str | None
    stop_detail: str | None
    observed: int
    memory_base: dict[str, int]
    questions: list[str]
    interviewer: str | None
    qa: list[dict[str, str]]
    extracted: dict[str, Any] | None
    extract_error: str | None


def initial_state(
    scenario: Scenario,
    participants: Sequence[Participant],
    *,
    questions: Sequence[str] = (),
    interviewer: str | None = None,
    memory_base: dict[str, int] | None = None,
) -> DialogueState:
    """The input state of a fresh conversation."""
    state: DialogueState = {
        "transcript": [],
        "participants": [p.model_dump(mode="json") for p in participants],
        "scenario": scenario.model_dump(mode="json"),
        "next_speaker": None,
        "speaker_choice": None,
        "draft": None,
        "stop_reason": None,
        "stop_detail": None,
        "observed": 0,
    }
    if memory_base is not None:
        state["memory_base"] = dict(memory_base)
    if questions:
        state["questions"] = list(questions)
        state["interviewer"] = interviewer
        state["qa"] = []
    return state


def derive_seed(*parts: Any) -> int:
    """A deterministic 31-bit seed from ``parts`` (e.g. job seed, conversation id, turn, attempt)."""
    return int(content_hash(list(parts), length=8), 16) & 0x7FFFFFFF


def utterance_id(conversation_id: str, turn: int) -> str:
    """The id of the utterance at ``turn``: stable, so a re-run node replaces, never duplicates."""
    return stable_id("utt", conversation_id, turn)


def run_context(runtime: Any) -> RunContext:
    """The :class:`RunContext` of a node's runtime, or a default one when none was given."""
    context = getattr(runtime, "context", None)
    return context if isinstance(context, RunContext) else RunContext()


def transcript_of(state: DialogueState) -> list[Utterance]:
    """The committed utterances as models."""
    return [Utterance.model_validate(u) for u in state.get("transcript") or []]


def participants_of(state: DialogueState) -> list[Participant]:
    """The participants as models."""
    return [Participant.model_validate(p) for p in state.get("participants") or []]


def scenario_of(state: DialogueState) -> Scenario:
    """The scenario as a model."""
    return Scenario.model_validate(state["scenario"])


def participant_by_id(participants: Iterable[Participant], participant_id: str | None) -> Participant:
    """The participant with ``participant_id``; ``KeyError`` naming the known ids otherwise."""
    found = [p for p in participants if p.id == participant_id]
    if not found:
        raise KeyError(f"no participant {participant_id!r}; known: {[p.id for p in participants]}")
    return found[0]


def speaker_labels(participants: Sequence[Participant]) -> dict[str, str]:
    """Participant id → display name; names shared by several participants get their role added."""
    names = [p.persona.name for p in participants]
    labels: dict[str, str] = {}
    for p in participants:
        label = p.persona.name if names.count(p.persona.name) == 1 else f"{p.persona.name} ({p.role})"
        while label in labels.values():
            label = f"{label} #{len(labels) + 1}"
        labels[p.id] = label
    return labels
