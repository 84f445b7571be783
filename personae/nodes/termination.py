"""The termination node: should the conversation end, and why.

Cheap rules run first: max turns, a closing/farewell exchange between two different
speakers, a repetition loop, empty replies, and (interviews) all questions answered.
Then an LLM detector reads a sliding window of the conversation: when the latest turn
has a closing cue (a goodbye, thanks, "that's all"; see ``detector_schedule``) and, as
a backstop, every ``detector_every`` turns. When the critic already asked the detector's
question together with its judgement of the turn (``fold_into_critic``; the verdict is
in ``utterance.metadata["critic"]["end"]``), that answer is used instead of a second
model call. The stop reason (:class:`~personae.models.StopReason`) and a detail are
written to the state; route with :func:`route_after_termination`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import numpy as np
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, field_validator

from personae.embeddings.base import Embedder
from personae.errors import ModelOutputError
from personae.llm.base import Message
from personae.nodes._text import normalise, valid_regex
from personae.llm.gateway import Gateway
from personae.models import StopReason, Utterance
from personae.nodes.events import spoken
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
    "DEFAULT_CLOSING_PATTERNS",
    "DEFAULT_DETECTOR_CUES",
    "TerminationConfig",
    "EndDetection",
    "check_rules",
    "detector_due",
    "detector_lines",
    "folded_end",
    "make_termination_node",
    "route_after_termination",
]

log = logging.getLogger(__name__)

DEFAULT_CLOSING_PATTERNS: tuple[str, ...] = (
    r"\bgood ?bye\b",
    r"\bbye\b",
    r"\bfarewell\b",
    r"\btake care\b",
    r"\bsee you\b",
    r"\bhave a (nice|good|great|lovely) (day|evening|night|weekend|one)\b",
    r"\btalk (to you )?(soon|later)\b",
)


DEFAULT_DETECTOR_CUES: tuple[str, ...] = (
    r"\bthanks?\b",
    r"\bthank you\b",
    r"\bcheers\b",
    r"\bappreciate\b",
    r"\b(that's|that is) (all|everything|it)\b",
    r"\ball set\b",
    r"\banything else\b",
)
"""Wrap-up phrases that may end a conversation without a goodbye: worth asking the detector."""


class TerminationConfig(BaseModel):
    """Which end-of-conversation rules apply, and the LLM detector's schedule."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int | None = Field(None, ge=1, description="overrides the scenario's max_turns when set")
    closing: bool = True
    closing_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_CLOSING_PATTERNS))
    repetition: bool = True
    repetition_window: int = Field(6, ge=3)
    repetition_threshold: float = Field(0.97, gt=0.0, le=1.0, description="cosine counted as a repeat (with an embedder)")
    empty: bool = True
    empty_limit: int = Field(2, ge=1, description="consecutive empty replies that end the conversation")
    detector: bool = True
    detector_schedule: Literal["cues", "every"] = Field(
        "cues", description="cues: run the LLM detector when the latest turn has a closing cue (closing_patterns or "
        "detector_cues; once per run of cue turns, then every detector_every turns while they last) and as a backstop every "
        "detector_every turns; every: every detector_every turns only",
    )
    detector_every: int = Field(12, ge=1, description="run the LLM detector every N turns (the backstop with schedule=cues)")
    detector_cues: list[str] = Field(default_factory=lambda: list(DEFAULT_DETECTOR_CUES),
                                     description="regexes that, besides closing_patterns, make a turn a closing cue")
    detector_window: int = Field(6, ge=2, description="turns the detector reads")
    role: str = Field("termination", description="gateway role of the detector model")
    fold_into_critic: bool = Field(
        True, description="when the critic's LLM judge runs on a draft after which the detector is due, and the same model serves "
        "both roles, ask the detector's question in the judge's call (one call, two verdicts) instead of a call of its own",
    )

    @field_validator("closing_patterns", "detector_cues")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        return [valid_regex(p) for p in patterns]


class EndDetection(BaseModel):
    """What the LLM detector returns."""

    ended: bool = Field(description="the conversation has reached a natural end")
    reason: str = Field("", description="one short sentence why")


def _is_closing(text: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


async def _repeats(window: Sequence[Utterance], threshold: float, embedder: Embedder | None) -> list[bool]:
    """For each utterance in ``window``: does it repeat an earlier one in the window?"""
    norms = [normalise(u.text) for u in window]
    flags = [any(n and n == m for m in norms[:i]) for i, n in enumerate(norms)]
    if embedder is not None and not all(flags[-2:]):
        texts = [u.text for u in window]
        vectors = np.asarray(await embedder.aembed(texts), dtype=np.float32)
        sims = vectors @ vectors.T
        flags = [flags[i] or bool(i and sims[i, :i].max() >= threshold and norms[i]) for i in range(len(window))]
    return flags


async def check_rules(
    transcript: Sequence[Utterance],
    config: TerminationConfig,
    *,
    max_turns: int,
    min_turns: int = 0,
    embedder: Embedder | None = None,
    questions: int = 0,
    interviewer: str | None = None,
) -> tuple[StopReason, str] | None:
    """The first rule that ends the conversation, as ``(reason, detail)``, or ``None``."""
    n = len(transcript)
    if questions and interviewer is not None:
        asked = sum(1 for u in transcript if u.speaker == interviewer)
        if asked >= questions and transcript and transcript[-1].speaker != interviewer:
            return StopReason.QUESTIONS_DONE, f"all {questions} questions answered"
    if n >= max_turns:
        return StopReason.MAX_TURNS, f"reached {max_turns} turns"
    if config.empty and n >= config.empty_limit:
        if all(not u.text.strip() for u in transcript[-config.empty_limit :]):
            return StopReason.EMPTY, f"{config.empty_limit} empty replies in a row"
    if n < max(min_turns, 2):
        return None
    last, prev = transcript[-1], transcript[-2]
    if config.closing and last.speaker != prev.speaker:
        if _is_closing(last.text, config.closing_patterns) and _is_closing(prev.text, config.closing_patterns):
            return StopReason.CLOSING, "both sides said goodbye"
    if config.repetition and n >= 4:
        window = transcript[-config.repetition_window :]
        flags = await _repeats(window, config.repetition_threshold, embedder)
        if flags[-1] and flags[-2]:
            return StopReason.REPETITION, "the last two turns repeat earlier ones"
    return None


def _cued(text: str, config: TerminationConfig) -> bool:
    return _is_closing(text, config.closing_patterns) or _is_closing(text, config.detector_cues)


def detector_due(transcript: Sequence[Utterance], config: TerminationConfig, *, min_turns: int, max_turns: int) -> bool:
    """Whether the LLM detector asks about ``transcript`` (spoken turns only) under ``config``'s schedule.

    Not before ``min_turns`` (and two turns), never once ``max_turns`` is reached (the
    rule ends the conversation then); every ``detector_every`` turns, and with
    ``detector_schedule="cues"`` when the latest turn starts a run of closing cues.
    """
    n = len(transcript)
    if not config.detector or n < max(min_turns, 2) or n >= max_turns:
        return False
    if n % config.detector_every == 0:
        return True
    if config.detector_schedule == "every":
        return False
    # a closing cue in the latest turn: ask once when the cues start (not on every polite turn after)
    return _cued(transcript[-1].text, config) and not _cued(transcript[-2].text, config)


def detector_lines(state: DialogueState, transcript: Sequence[Utterance], config: TerminationConfig) -> list[dict[str, str]]:
    """The detector's window of ``transcript`` as prompt lines (label, role, text)."""
    participants = participants_of(state)
    labels = speaker_labels(participants)
    roles = {p.id: p.role for p in participants}
    return [
        {"label": labels.get(u.speaker, u.speaker), "role": roles.get(u.speaker, ""), "text": u.text}
        for u in transcript[-config.detector_window :]
    ]


def folded_end(transcript: Sequence[Utterance]) -> EndDetection | None:
    """The end verdict the critic asked with its judgement of the latest turn, if it did (else ``None``).

    The critic records it (``metadata["critic"]["end"]``, with the number of turns it
    was asked about) only when the judged draft is the one committed, so it answers the
    detector's question about exactly this transcript.
    """
    if not transcript:
        return None
    end = (transcript[-1].metadata.get("critic") or {}).get("end")
    if not isinstance(end, dict) or end.get("turns") != len(transcript):
        return None
    return EndDetection(ended=bool(end["ended"]), reason=str(end.get("reason", "")))


def route_after_termination(state: DialogueState) -> Literal["stop", "continue"]:
    """``"stop"`` once a stop reason is set, else ``"continue"``."""
    return "stop" if state.get("stop_reason") else "continue"


def make_termination_node(
    config: TerminationConfig,
    *,
    gateway: Gateway | None = None,
    embedder: Embedder | None = None,
    prompts: PromptSet | None = None,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node deciding whether to stop; it writes ``stop_reason`` and ``stop_detail``."""

    async def termination(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        if state.get("stop_reason"):
            return {}
        ctx = run_context(runtime)
        transcript = spoken(transcript_of(state))  # injected events are not turns
        scenario = scenario_of(state)
        max_turns = config.max_turns or scenario.max_turns
        found = await check_rules(
            transcript,
            config,
            max_turns=max_turns,
            min_turns=scenario.min_turns,
            embedder=embedder,
            questions=len(state.get("questions") or []),
            interviewer=state.get("interviewer"),
        )
        if found is None and gateway is not None and detector_due(transcript, config, min_turns=scenario.min_turns, max_turns=max_turns):
            folded = folded_end(transcript)
            if folded is not None:  # the critic asked this question with its judgement of the latest turn
                found = (StopReason.DETECTOR, folded.reason or "the detector judged the conversation finished") if folded.ended else None
            else:
                found = await _detect(ctx, state, transcript)
        if found is None:
            return {}
        reason, detail = found
        log.debug("%s ends after %d turns: %s (%s)", ctx.conversation_id, len(transcript), reason.value, detail)
        return {"stop_reason": reason.value, "stop_detail": detail}

    async def _detect(ctx: RunContext, state: DialogueState, transcript: list[Utterance]) -> tuple[StopReason, str] | None:
        content = render_with(prompts, "termination_detector", {"scenario": state["scenario"], "lines": detector_lines(state, transcript, config)})
        seed = derive_seed(ctx.seed, ctx.conversation_id, len(transcript), "termination")
        try:
            verdict = await gateway.structured([Message(role="user", content=content)], EndDetection, role=config.role, seed=seed)
        except ModelOutputError as exc:
            log.warning("termination detector reply unusable in %s; continuing: %s", ctx.conversation_id, exc.message)
            return None
        return (StopReason.DETECTOR, verdict.reason or "the detector judged the conversation finished") if verdict.ended else None

    termination.__name__ = "termination"
    return termination
