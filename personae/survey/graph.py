"""The survey graph: the interview graph's state and cast, one question per LangGraph step.

A survey is an interview (``GraphConfig(kind="interview")``: an interviewer and one
respondent, the runner's jobs, checkpoints and resume) whose questions come from an
:class:`~personae.survey.instrument.Instrument`. Each step picks the next question by
the skip logic, pipes earlier answers into its text, draws the option order for this
respondent, elicits the answer (direct or two-pass) and commits two utterances: the
interviewer's question (``metadata["question_id"]``, ``metadata["option_order"]``) and
the respondent's answer (``metadata["survey"]``: the answer record). The transcript is
the only record, merged by id, so a step re-run after a crash replaces its turns.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from personae.graphs.config import GraphConfig
from personae.llm.gateway import Gateway
from personae.models import Role, Scenario, Utterance
from personae.nodes.critic import CriticConfig
from personae.nodes.projection import render_system_prompt
from personae.nodes.state import DialogueState, RunContext, derive_seed, participants_of, run_context, scenario_of, transcript_of, utterance_id
from personae.nodes.termination import TerminationConfig
from personae.prompts import PromptSet, render_with
from personae.survey.elicit import Mode, elicit, question_prompt
from personae.survey.instrument import Instrument, next_question, option_order, pipe_text

__all__ = ["survey_graph", "survey_graph_config", "default_scenario", "answer_records", "make_survey_node"]

# an unclassified reply is shown back in later questions' prompts ("your earlier answers") and piped
# into their text; a runaway reply (a small model looping) would otherwise overflow the context of
# every later question. The table keeps the whole reply (``raw``).
_EARLIER_CHARS = 300


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EARLIER_CHARS else text[: _EARLIER_CHARS - 1] + "…"


def default_scenario(instrument: Instrument) -> Scenario:
    """A neutral self-completion survey setting with the interviewer and respondent roles."""
    return Scenario(
        name=f"survey: {instrument.name}",
        setting=instrument.description or "An anonymous survey run by an independent research institute.",
        roles=[
            Role(name="interviewer", goal="Ask each question neutrally."),
            Role(name="respondent", goal="Answer honestly from your own life and views."),
        ],
        max_turns=max(2, 2 * len(instrument.questions)),
        min_turns=0,
    )


def survey_graph_config(instrument: Instrument) -> GraphConfig:
    """The interview config a survey's jobs carry (questions as written; no critic, no detector)."""
    n = len(instrument.questions)
    return GraphConfig(
        kind="interview",
        questions=[q.text for q in instrument.questions],
        critic=CriticConfig(enabled=False),
        termination=TerminationConfig(detector=False, closing=False, max_turns=2 * n),
    )


def answer_records(transcript: list[dict[str, Any]] | list[Utterance]) -> list[dict[str, Any]]:
    """The answer records of a survey transcript, in the order asked."""
    out = []
    for u in transcript:
        metadata = u.metadata if isinstance(u, Utterance) else u.get("metadata") or {}
        if "survey" in metadata:
            out.append(metadata["survey"])
    return out


def _answer_value(record: dict[str, Any]) -> Any:
    return record["codes"] if record.get("codes") else record.get("value")


def make_survey_node(
    instrument: Instrument,
    *,
    gateway: Gateway,
    mode: Mode = "direct",
    seed: int = 0,
    prompts: PromptSet | None = None,
    temperature: float = 0.7,
    max_tokens: int = 200,
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """A node asking the next question of ``instrument`` and recording the answer.

    The option order depends on ``seed`` and the respondent's persona id only, so the
    same respondent sees the same order in every run with that seed.
    """

    async def survey(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        ctx = run_context(runtime)
        transcript = transcript_of(state)
        records = answer_records(transcript)
        answers = {r["question_id"]: _answer_value(r) for r in records}
        asked = [r["question_id"] for r in records]
        question, skipped = next_question(instrument, answers, asked)
        if question is None:
            detail = f"{len(asked)} of {len(instrument.questions)} questions asked"
            return {"stop_reason": "questions_done", "stop_detail": detail, "extracted": {"answers": records}}
        participants = participants_of(state)
        interviewer_id = state.get("interviewer")
        me = next(p for p in participants if p.id != interviewer_id)
        respondent_id = me.persona.id
        order = option_order(question, instrument, seed, respondent_id)
        text = pipe_text(question, answers, instrument)
        number = f"{len(asked) + 1} of up to {len(instrument.questions)}"
        earlier = [{"text": r["text"], "answer": r["answer_text"]} for r in records]
        intro = render_with(prompts, "survey_respondent", {"instrument": instrument.model_dump(mode="json")})
        system = render_system_prompt(me, scenario_of(state), participants, prompts=prompts, extra=intro)
        answer = await elicit(
            gateway, question, system=system, text=text, order=order, number=number, earlier=earlier, mode=mode,
            seed=derive_seed(ctx.seed, ctx.conversation_id, question.id), temperature=temperature, max_tokens=max_tokens,
            prompts=prompts,
        )
        labels = [question.option(c).label for c in answer.codes]  # type: ignore[union-attr]
        answer_text = ", ".join(labels) if labels else (_clip(answer.raw) if answer.value is None else f"{answer.value:g}")
        record = {
            **answer.model_dump(mode="json"), "type": question.type, "position": len(asked), "text": text,
            "option_order": order, "mode": mode, "skipped": skipped, "answer_text": answer_text or "no answer",
        }
        turn = len(transcript)
        shown = question_prompt(question, text, order, number=number, earlier=[], mode="free" if mode == "two_pass" else "direct", prompts=prompts)
        asked_utt = Utterance(
            id=utterance_id(ctx.conversation_id, turn), speaker=interviewer_id, turn=turn, text=shown.strip(),
            metadata={"question": question.text, "question_id": question.id, "question_index": instrument.index(question.id), "option_order": order},
        )
        reply_utt = Utterance(
            id=utterance_id(ctx.conversation_id, turn + 1), speaker=me.id, turn=turn + 1,
            text=(answer.raw or answer_text or "(no answer)"), metadata={"survey": record},
        )
        return {"transcript": [asked_utt.model_dump(mode="json"), reply_utt.model_dump(mode="json")]}

    survey.__name__ = "survey"
    return survey


async def _route(state: DialogueState) -> str:
    return "stop" if state.get("stop_reason") else "next"


def survey_graph(
    instrument: Instrument,
    *,
    gateway: Gateway,
    mode: Mode = "direct",
    seed: int = 0,
    prompts: PromptSet | None = None,
    checkpointer: Any = None,
    temperature: float = 0.7,
    max_tokens: int = 200,
):
    """The compiled survey graph: ``survey`` ⟲ until the instrument is done (state: an interview's)."""
    builder = StateGraph(DialogueState, context_schema=RunContext)
    builder.add_node("survey", make_survey_node(instrument, gateway=gateway, mode=mode, seed=seed, prompts=prompts, temperature=temperature, max_tokens=max_tokens))
    builder.add_edge(START, "survey")
    builder.add_conditional_edges("survey", _route, {"next": "survey", "stop": END})
    return builder.compile(checkpointer=checkpointer, name="survey")
