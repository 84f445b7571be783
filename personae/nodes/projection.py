"""Egocentric Context Projection (SPASM) and the concatenation baseline.

One perspective-agnostic transcript is projected, before every generation, into the
chat messages the speaking agent sees:

* :func:`project_egocentric`: the agent's own past turns become ``assistant``
  messages and everyone else's become ``user`` messages (prefixed with the speaker's
  name when more than two people take part), under the agent's own system prompt.
* :func:`project_concat`: the whole history pasted as labelled text into one user
  message, the ablation baseline SPASM compares against.

Both are pure functions; the system prompt comes from :func:`render_system_prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from personae.llm.base import Message
from personae.models import Participant, Scenario, Utterance, is_event
from personae.nodes.events import sees
from personae.nodes.state import participant_by_id, speaker_labels
from personae.prompts import PromptSet, render_with

__all__ = [
    "Projection",
    "render_system_prompt",
    "project_egocentric",
    "project_concat",
    "project",
]

Projection = Literal["ecp", "concat"]


def render_system_prompt(
    participant: Participant,
    scenario: Scenario,
    participants: Sequence[Participant],
    *,
    memories: Sequence[str] = (),
    prompts: PromptSet | None = None,
    extra: str | None = None,
) -> str:
    """The speaking agent's system prompt: persona, role and goal, setting, others, memories."""
    labels = speaker_labels(participants)
    try:
        role = scenario.role(participant.role)
    except KeyError:
        role = None
    others = [
        {"name": labels[p.id], "role": p.role, "summary": p.persona.summary()}
        for p in participants
        if p.id != participant.id
    ]
    return render_with(
        prompts,
        "persona_system",
        {
            "persona": participant.persona.model_dump(mode="json"),
            "details": participant.persona.summary().removeprefix(participant.persona.name).lstrip(", "),
            "name": labels[participant.id],
            "role_name": participant.role,
            "role": None if role is None else role.model_dump(mode="json"),
            "scenario": scenario.model_dump(mode="json"),
            "others": others,
            "memories": list(memories),
            "extra": extra,
        },
    )


def _windowed(transcript: Sequence[Utterance], window: int | None) -> Sequence[Utterance]:
    if window is None or window >= len(transcript):
        return transcript
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return transcript[len(transcript) - window :] if window else []


def project_egocentric(
    transcript: Sequence[Utterance],
    speaker_id: str,
    participants: Sequence[Participant],
    system_prompt: str,
    *,
    opening: str | None = None,
    continuation: str | None = None,
    window: int | None = None,
    prompts: PromptSet | None = None,
) -> list[Message]:
    """Project ``transcript`` into chat messages as seen by ``speaker_id``.

    Args:
        transcript: committed utterances, oldest first.
        speaker_id: the participant about to speak.
        participants: everyone in the conversation (names label others' turns when > 2).
        system_prompt: the speaker's own system prompt.
        opening: user message placed first when the speaker opens the conversation (or
            when the visible window starts with the speaker's own turn).
        continuation: user message appended when the speaker spoke last and must go on.
        window: keep only the last ``window`` utterances (older content reaches the
            agent through memory retrieval instead).

    Injected events (``metadata["kind"] == "event"``) the speaker receives become
    ``user`` messages labelled as events (template ``event_message``); events addressed
    to others are left out. ``opening`` is still shown when only events precede the
    speaker's first visible turn.

    Consecutive messages with the same role are merged into one, so the result
    alternates user/assistant after the system message.
    """
    participant_by_id(participants, speaker_id)  # unknown speaker → KeyError naming the ids
    labels = speaker_labels(participants)
    named = len(participants) > 2
    turns: list[tuple[str, str]] = []
    heard_other = False  # someone else spoke before the speaker's first visible turn
    for utt in _windowed(transcript, window):
        if not sees(utt, speaker_id):
            continue
        if is_event(utt):
            role, content = "user", render_with(prompts, "event_message", {"source": utt.speaker, "text": utt.text})
        elif utt.speaker == speaker_id:
            role, content = "assistant", utt.text
        else:
            role = "user"
            content = f"{labels.get(utt.speaker, utt.speaker)}: {utt.text}" if named else utt.text
            heard_other = heard_other or not any(r == "assistant" for r, _ in turns)
        if turns and turns[-1][0] == role:
            turns[-1] = (role, f"{turns[-1][1]}\n\n{content}")
        else:
            turns.append((role, content))
    if opening and not heard_other:
        if turns and turns[0][0] == "user":
            turns[0] = ("user", f"{opening}\n\n{turns[0][1]}")
        else:
            turns.insert(0, ("user", opening))
    if turns and turns[-1][0] == "assistant" and continuation:
        turns.append(("user", continuation))
    return [Message(role="system", content=system_prompt)] + [
        Message(role=role, content=content) for role, content in turns
    ]


def project_concat(
    transcript: Sequence[Utterance],
    speaker_id: str,
    participants: Sequence[Participant],
    system_prompt: str,
    *,
    opening: str | None = None,
    window: int | None = None,
    prompts: PromptSet | None = None,
) -> list[Message]:
    """The baseline: the (windowed) history as labelled lines inside one user message."""
    speaker = participant_by_id(participants, speaker_id)
    labels = speaker_labels(participants)
    roles = {p.id: p.role for p in participants}
    lines = [
        {"label": labels.get(u.speaker, u.speaker), "role": "event" if is_event(u) else roles.get(u.speaker, ""), "text": u.text}
        for u in _windowed(transcript, window)
        if sees(u, speaker_id)
    ]
    content = render_with(
        prompts,
        "persona_concat",
        {"lines": lines, "name": labels[speaker.id], "role_name": speaker.role, "opening": opening},
    )
    return [Message(role="system", content=system_prompt), Message(role="user", content=content)]


def project(
    kind: Projection,
    transcript: Sequence[Utterance],
    speaker_id: str,
    participants: Sequence[Participant],
    system_prompt: str,
    *,
    opening: str | None = None,
    continuation: str | None = None,
    window: int | None = None,
    prompts: PromptSet | None = None,
) -> list[Message]:
    """Dispatch to :func:`project_egocentric` (``"ecp"``) or :func:`project_concat` (``"concat"``)."""
    if kind == "ecp":
        return project_egocentric(
            transcript, speaker_id, participants, system_prompt,
            opening=opening, continuation=continuation, window=window, prompts=prompts,
        )
    if kind == "concat":
        return project_concat(
            transcript, speaker_id, participants, system_prompt,
            opening=opening, window=window, prompts=prompts,
        )
    raise ValueError(f"unknown projection {kind!r}; expected 'ecp' or 'concat'")
