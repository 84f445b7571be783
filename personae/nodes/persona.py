"""The persona node: projection → model → utterance (or a draft for the critic)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from langgraph.runtime import Runtime

from personae.llm.gateway import Gateway
from personae.llm.base import Message
from personae.models import Participant, Scenario, Utterance
from personae.nodes.events import sees
from personae.nodes.projection import Projection, project, render_system_prompt
from personae.nodes.state import (
    DialogueState,
    RunContext,
    derive_seed,
    participant_by_id,
    participants_of,
    run_context,
    scenario_of,
    speaker_labels,
    transcript_of,
    utterance_id,
)
from personae.prompts import PromptSet, render_with

__all__ = ["Retriever", "make_persona_node", "clean_reply", "retrieval_query"]

log = logging.getLogger(__name__)

class Retriever(Protocol):
    """Memory lookup feeding the persona node (see :func:`personae.nodes.memory.make_memory_retriever`)."""

    async def __call__(
        self,
        agent_id: str,
        query: str,
        *,
        now_step: int | None = None,
        conversation_id: str | None = None,
        skip_from_step: int | None = None,
    ) -> Sequence[str]:
        """Memory texts for ``query`` at logical time ``now_step``; memories of
        ``conversation_id`` at or after ``skip_from_step`` are left out (they are
        already in the prompt's window)."""
        ...


def clean_reply(text: str, own_labels: Sequence[str]) -> str:
    """Strip whitespace, wrapping quotes and a leading ``"<own name or role>:"`` prefix."""
    out = _unquote(text.strip())
    for label in sorted({lbl for lbl in own_labels if lbl}, key=len, reverse=True):
        prefix = re.compile(rf"^\**{re.escape(label)}\**\s*(\([^)]*\))?\s*:\s*", re.IGNORECASE)
        out = prefix.sub("", out, count=1)
    return _unquote(out)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1].strip()
    return text


def retrieval_query(transcript: Sequence[Utterance], speaker_id: str, scenario: Scenario, role: str) -> str:
    """What to look up in memory: the latest turn by someone else, else the speaker's goal."""
    for utt in reversed(transcript):
        if utt.speaker != speaker_id and utt.text.strip() and sees(utt, speaker_id):
            return utt.text
    try:
        goal = scenario.role(role).goal
    except KeyError:
        goal = ""
    return goal or scenario.setting or scenario.name


def make_persona_node(
    gateway: Gateway,
    *,
    prompts: PromptSet | None = None,
    projection: Projection = "ecp",
    window: int | None = None,
    retriever: Retriever | None = None,
    review: bool = False,
    temperature: float = 0.8,
    max_tokens: int | None = 200,
    role: str = "persona",
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node that lets ``state["next_speaker"]`` speak.

    Args:
        gateway: every model call goes through it; the call uses the participant's own
            ``model`` as gateway role when set, else ``role``.
        prompts: prompt templates (packaged ones by default).
        projection: ``"ecp"`` (egocentric) or ``"concat"`` (baseline).
        window: only the last ``window`` utterances are shown; older content reaches the
            agent through ``retriever``.
        retriever: memory lookup feeding the system prompt; ``None`` for no memory.
        review: ``True`` writes the reply to ``state["draft"]`` for a critic; ``False``
            commits it to the transcript directly.

    When the draft in state carries critic feedback for this speaker and turn, the
    previous attempt and the feedback are shown and the attempt number goes up; the
    seed is derived from (job seed, conversation id, turn, attempt).
    """

    async def persona(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        ctx = run_context(runtime)
        participants = participants_of(state)
        scenario = scenario_of(state)
        transcript = transcript_of(state)
        speaker = participant_by_id(participants, state.get("next_speaker"))
        turn = len(transcript)
        draft = state.get("draft") or None
        revising = bool(
            draft and draft.get("feedback") and draft.get("turn") == turn and draft.get("speaker") == speaker.id
        )
        attempt = int(draft["attempt"]) + 1 if revising else 0

        memories: Sequence[str] = ()
        if retriever is not None:
            query = retrieval_query(transcript, speaker.id, scenario, speaker.role)
            base = (state.get("memory_base") or {}).get(speaker.persona.id)
            memories = list(
                await retriever(
                    speaker.persona.id,
                    query,
                    now_step=None if base is None else base + turn,
                    conversation_id=ctx.conversation_id,
                    skip_from_step=None if base is None else base + max(0, turn - (window or turn)),
                )
            )
        messages = _messages(state, speaker, participants, scenario, transcript, memories)
        if revising:
            # first revision: show the rejected reply with the feedback; later ones leave it out, since a
            # small model asked to fix a reply it can see tends to copy it again
            shown = attempt < 2
            if shown:
                messages.append(Message(role="assistant", content=draft["text"] or "…"))
            messages.append(Message(role="user", content=render_with(prompts, "persona_revise", {"feedback": draft["feedback"], "shown": shown})))
        seed = derive_seed(ctx.seed, ctx.conversation_id, turn, attempt)
        response = await gateway.text(
            messages, role=speaker.model or role, seed=seed, temperature=temperature, max_tokens=max_tokens
        )
        labels = speaker_labels(participants)
        text = clean_reply(response.text, [labels[speaker.id], speaker.persona.name, speaker.role])
        metadata: dict[str, Any] = {
            "role": speaker.role,
            "attempt": attempt,
            "seed": seed,
            "model": response.model,
            "cached": response.cached,
            "prompt_messages": len(messages),
            "usage": {
                "prompt_tokens": response.usage.prompt_tokens,
                "completion_tokens": response.usage.completion_tokens,
            },
        }
        if retriever is not None:
            metadata["memories"] = len(memories)
        if state.get("speaker_choice"):
            metadata["turn_policy"] = state["speaker_choice"]
        if review:
            history = list(draft.get("history", [])) if revising else []
            return {
                "draft": {
                    "speaker": speaker.id,
                    "turn": turn,
                    "text": text,
                    "attempt": attempt,
                    "feedback": None,
                    "history": history,
                    "metadata": metadata,
                }
            }
        utterance = Utterance(
            id=utterance_id(ctx.conversation_id, turn), speaker=speaker.id, turn=turn, text=text, metadata=metadata
        )
        return {"transcript": [utterance.model_dump(mode="json")], "draft": None}

    def _messages(
        state: DialogueState,
        speaker: Participant,
        participants: list[Participant],
        scenario: Scenario,
        transcript: list[Utterance],
        memories: Sequence[str],
    ) -> list[Message]:
        system = render_system_prompt(speaker, scenario, participants, memories=memories, prompts=prompts)
        try:
            goal = scenario.role(speaker.role).goal
        except KeyError:
            goal = ""
        opening = render_with(
            prompts,
            "persona_opening",
            {"scenario": scenario.model_dump(mode="json"), "role_name": speaker.role, "goal": goal},
        )
        continuation = render_with(prompts, "persona_continue", {})
        return project(
            projection, transcript, speaker.id, participants, system,
            opening=opening, continuation=continuation, window=window, prompts=prompts,
        )

    persona.__name__ = "persona"
    return persona
