"""Interview nodes: the interviewer asks a question list; answers are extracted into a model."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from langgraph.runtime import Runtime
from pydantic import BaseModel, Field

from personae.errors import ConfigError, ModelOutputError
from personae.llm.base import Message
from personae.llm.gateway import Gateway
from personae.models import Utterance
from personae.nodes.projection import project_egocentric, render_system_prompt
from personae.nodes.state import (
    DialogueState,
    RunContext,
    derive_seed,
    participant_by_id,
    participants_of,
    run_context,
    scenario_of,
    transcript_of,
    utterance_id,
)
from personae.prompts import PromptSet, render_with

__all__ = [
    "QuestionAnswer",
    "InterviewAnswers",
    "pair_answers",
    "route_by_speaker",
    "make_question_node",
    "make_extract_node",
]

log = logging.getLogger(__name__)


class QuestionAnswer(BaseModel):
    """One question and the respondent's answer."""

    question: str
    answer: str = Field(description="the respondent's answer, summarised faithfully in their words")


class InterviewAnswers(BaseModel):
    """The default extraction schema: every question with its answer."""

    answers: list[QuestionAnswer] = Field(default_factory=list)


def pair_answers(transcript: list[Utterance], interviewer: str) -> list[dict[str, str]]:
    """Question/answer pairs: each interviewer question with the replies that follow it."""
    pairs: list[dict[str, str]] = []
    for utt in transcript:
        if utt.speaker == interviewer:
            question = utt.metadata.get("question", utt.text)
            pairs.append({"question": question, "asked": utt.text, "answer": ""})
        elif pairs:
            pairs[-1]["answer"] = f"{pairs[-1]['answer']}\n{utt.text}".strip()
    return pairs


def route_by_speaker(state: DialogueState) -> Literal["interviewer", "respondent"]:
    """``"interviewer"`` when the interviewer is next, else ``"respondent"``."""
    return "interviewer" if state.get("next_speaker") == state.get("interviewer") else "respondent"


def make_question_node(
    *,
    gateway: Gateway | None = None,
    phrase: bool = False,
    prompts: PromptSet | None = None,
    temperature: float = 0.7,
    max_tokens: int | None = 120,
    role: str = "interviewer",
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node committing the interviewer's next question from ``state["questions"]``.

    Verbatim by default; with ``phrase`` the interviewer's model words the question
    naturally, in the flow of the conversation.
    """
    if phrase and gateway is None:
        raise ConfigError("phrasing questions needs a gateway", field="phrase_questions")

    async def interviewer(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        ctx = run_context(runtime)
        questions = state.get("questions") or []
        speaker_id = state.get("interviewer")
        transcript = transcript_of(state)
        index = sum(1 for u in transcript if u.speaker == speaker_id)
        if index >= len(questions):
            return {"stop_reason": "questions_done", "stop_detail": f"all {len(questions)} questions asked"}
        question = questions[index]
        turn = len(transcript)
        metadata: dict[str, Any] = {"question_index": index, "question": question}
        text = question
        if phrase:
            participants = participants_of(state)
            me = participant_by_id(participants, speaker_id)
            scenario = scenario_of(state)
            extra = render_with(prompts, "interview_question", {"question": question, "index": index + 1, "total": len(questions)})
            system = render_system_prompt(me, scenario, participants, prompts=prompts, extra=extra)
            messages = project_egocentric(transcript, me.id, participants, system, opening=extra, continuation=extra)
            seed = derive_seed(ctx.seed, ctx.conversation_id, turn, "question")
            response = await gateway.text(messages, role=me.model or role, seed=seed, temperature=temperature, max_tokens=max_tokens)
            text = response.text.strip() or question
            metadata["usage"] = {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}
        utterance = Utterance(id=utterance_id(ctx.conversation_id, turn), speaker=speaker_id, turn=turn, text=text, metadata=metadata)
        return {"transcript": [utterance.model_dump(mode="json")], "draft": None}

    interviewer.__name__ = "interviewer"
    return interviewer


def make_extract_node(
    gateway: Gateway,
    schema: type[BaseModel] = InterviewAnswers,
    *,
    prompts: PromptSet | None = None,
    role: str = "extractor",
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node extracting the interview's answers into ``schema`` (``state["extracted"]``).

    The raw pairs go to ``state["qa"]``; an unusable model reply is recorded in
    ``state["extract_error"]`` rather than failing the conversation.
    """

    async def extract(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        ctx = run_context(runtime)
        transcript = transcript_of(state)
        interviewer_id = state.get("interviewer")
        qa = pair_answers(transcript, interviewer_id)
        respondent = next((p for p in participants_of(state) if p.id != interviewer_id), None)
        content = render_with(
            prompts,
            "interview_extract",
            {"qa": qa, "respondent": respondent.persona.name if respondent else "the respondent", "schema_name": schema.__name__},
        )
        seed = derive_seed(ctx.seed, ctx.conversation_id, "extract")
        update: dict[str, Any] = {"qa": [{"question": p["question"], "answer": p["answer"]} for p in qa]}
        try:
            result = await gateway.structured([Message(role="user", content=content)], schema, role=role, seed=seed)
        except ModelOutputError as exc:
            log.warning("answer extraction failed for %s: %s", ctx.conversation_id, exc.message)
            update.update({"extracted": None, "extract_error": exc.message})
            return update
        update.update({"extracted": result.model_dump(mode="json"), "extract_error": None})
        return update

    extract.__name__ = "extract"
    return extract
