"""Prebuilt graphs: dyad, group discussion and interview, all composed from the same nodes.

Each function validates its inputs and returns a compiled LangGraph graph taking a
:class:`~personae.nodes.state.DialogueState` (see :func:`personae.graphs.runner.job_state`)
and a :class:`~personae.nodes.state.RunContext` as ``context``. Pass a checkpointer
to make conversations resumable (thread id = conversation id).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from personae.embeddings.base import Embedder
from personae.errors import ConfigError
from personae.graphs.config import GraphConfig
from personae.llm.gateway import Gateway
from personae.nodes.critic import make_critic_node, route_after_critic
from personae.nodes.interview import InterviewAnswers, make_extract_node, make_question_node, route_by_speaker
from personae.nodes.orchestrator import CustomPolicy, make_orchestrator_node
from personae.nodes.persona import make_persona_node
from personae.nodes.state import DialogueState, RunContext
from personae.nodes.termination import TerminationConfig, make_termination_node, route_after_termination
from personae.prompts import PromptSet

__all__ = ["dyad", "group", "interview", "build_graph", "recursion_limit"]

log = logging.getLogger(__name__)


def _inline(route: Callable[[DialogueState], str]) -> Callable[[DialogueState], Awaitable[str]]:
    """``route`` as a coroutine function: LangGraph runs a sync router in a thread pool on
    every step (about a tenth of a turn's CPU in ``bench/overhead.py``); an async one inline."""

    async def routed(state: DialogueState) -> str:
        return route(state)

    routed.__name__ = route.__name__
    return routed


def recursion_limit(config: GraphConfig, max_turns: int) -> int:
    """LangGraph steps a conversation of ``max_turns`` may need (critic retries included)."""
    turns = config.termination.max_turns or max_turns
    per_turn = 5 + 2 * (config.critic.max_attempts - 1 if config.critic.enabled else 0)
    return turns * per_turn + 20


def _memory_parts(config: GraphConfig, memory: Any, gateway: Gateway, prompts: PromptSet | None):
    if not config.memory.enabled:
        return None, None
    if memory is None:
        raise ConfigError("memory is enabled in the graph config but no AgentMemory was given", field="memory.enabled", expected="pass memory=AgentMemory(...) or set memory.enabled: false")
    from personae.nodes.memory import make_memory_node, make_memory_retriever

    node = make_memory_node(memory, gateway=gateway, reflect=config.memory.reflect, reflect_threshold=config.memory.reflect_threshold, prompts=prompts)
    return node, make_memory_retriever(memory, k=config.memory.k)


def _check_kind(config: GraphConfig | None, kind: str) -> GraphConfig:
    config = config or GraphConfig(kind=kind)
    if config.kind != kind:
        raise ConfigError(f"{kind}() got a config for a {config.kind} graph", field="kind", expected=kind, got=config.kind)
    return config


def _add_turn(
    builder: StateGraph,
    speaker: str,
    config: GraphConfig,
    termination: TerminationConfig,
    *,
    gateway: Gateway,
    embedder: Embedder | None,
    memory: Any,
    prompts: PromptSet | None,
) -> str:
    """Add ``speaker`` (a persona node) → [critic ⟲ speaker] → [memory] → termination.

    Returns the node that follows a committed utterance (memory or termination).
    """
    memory_node, retriever = _memory_parts(config, memory, gateway, prompts)
    review = config.critic.enabled
    builder.add_node(
        speaker,
        make_persona_node(
            gateway, prompts=prompts, projection=config.projection, window=config.window, retriever=retriever,
            review=review, temperature=config.temperature, max_tokens=config.max_tokens,
        ),
    )
    after_commit = "memory" if memory_node is not None else "termination"
    if review:
        builder.add_node("critic", make_critic_node(config.critic, gateway=gateway, embedder=embedder, prompts=prompts))
        builder.add_edge(speaker, "critic")
        builder.add_conditional_edges("critic", _inline(route_after_critic), {"revise": speaker, "accept": after_commit})
    else:
        builder.add_edge(speaker, after_commit)
    if memory_node is not None:
        builder.add_node("memory", memory_node)
        builder.add_edge("memory", "termination")
    builder.add_node("termination", make_termination_node(termination, gateway=gateway, embedder=embedder, prompts=prompts))
    return after_commit


def _conversation(
    config: GraphConfig,
    *,
    gateway: Gateway,
    embedder: Embedder | None,
    memory: Any,
    prompts: PromptSet | None,
    turn_policy: CustomPolicy | None,
) -> StateGraph:
    """orchestrator → persona → [critic ⟲ persona] → [memory] → termination ⟲ orchestrator."""
    builder = StateGraph(DialogueState, context_schema=RunContext)
    builder.add_node(
        "orchestrator",
        make_orchestrator_node(
            turn_policy or config.policy, gateway=gateway, opener=config.opener, prompts=prompts,
            moderator_attempts=config.moderator_attempts,
        ),
    )
    _add_turn(builder, "persona", config, config.termination, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts)
    builder.add_edge(START, "orchestrator")
    builder.add_edge("orchestrator", "persona")
    builder.add_conditional_edges("termination", _inline(route_after_termination), {"continue": "orchestrator", "stop": END})
    return builder


def dyad(
    config: GraphConfig | None = None,
    *,
    gateway: Gateway,
    embedder: Embedder | None = None,
    memory: Any = None,
    prompts: PromptSet | None = None,
    checkpointer: Any = None,
    turn_policy: CustomPolicy | None = None,
):
    """A two-party conversation (SPASM's Client–Responder): turns alternate by default.

    Args:
        config: a ``kind="dyad"`` :class:`GraphConfig` (defaults when ``None``).
        gateway: serves persona, critic and termination models.
        embedder: used by the critic's echo check and the repetition rule.
        memory: an :class:`~personae.memory.AgentMemory`, required when ``config.memory.enabled``.
        checkpointer: a LangGraph checkpointer (e.g. ``AsyncSqliteSaver``) for resumable runs.
        turn_policy: a callable overriding ``config.turn_policy``.
    """
    config = _check_kind(config, "dyad")
    builder = _conversation(config, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts, turn_policy=turn_policy)
    return builder.compile(checkpointer=checkpointer, name="dyad")


def group(
    config: GraphConfig | None = None,
    *,
    gateway: Gateway,
    embedder: Embedder | None = None,
    memory: Any = None,
    prompts: PromptSet | None = None,
    checkpointer: Any = None,
    turn_policy: CustomPolicy | None = None,
):
    """An N-party discussion (focus group, brainstorm): a moderator model picks who speaks
    by default; ``round_robin``, ``random`` or a callable also work. Arguments as :func:`dyad`."""
    config = _check_kind(config, "group")
    builder = _conversation(config, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts, turn_policy=turn_policy)
    return builder.compile(checkpointer=checkpointer, name="group")


def interview(
    config: GraphConfig,
    *,
    gateway: Gateway,
    answer_schema: type[BaseModel] = InterviewAnswers,
    embedder: Embedder | None = None,
    memory: Any = None,
    prompts: PromptSet | None = None,
    checkpointer: Any = None,
):
    """An interview (survey): the interviewer asks ``config.questions`` in order, the
    respondent persona answers (reviewed by the critic), then the answers are
    extracted into ``answer_schema`` (``state["extracted"]``, pairs in ``state["qa"]``).

    The initial state names the interviewer (``state["interviewer"]``) and carries
    the questions; :func:`personae.graphs.runner.job_state` sets both.
    """
    config = _check_kind(config, "interview")
    builder = StateGraph(DialogueState, context_schema=RunContext)
    builder.add_node("orchestrator", make_orchestrator_node("alternate", opener=config.opener))
    builder.add_node("interviewer", make_question_node(gateway=gateway, phrase=config.phrase_questions, prompts=prompts))
    termination = config.termination.model_copy(
        update={"detector": False, "closing": False, "max_turns": config.termination.max_turns or 2 * len(config.questions)}
    )
    after_commit = _add_turn(builder, "respondent", config, termination, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts)
    builder.add_edge(START, "orchestrator")
    builder.add_conditional_edges("orchestrator", _inline(route_by_speaker), {"interviewer": "interviewer", "respondent": "respondent"})
    builder.add_edge("interviewer", after_commit)
    builder.add_node("extract", make_extract_node(gateway, answer_schema, prompts=prompts))
    builder.add_conditional_edges("termination", _inline(route_after_termination), {"continue": "orchestrator", "stop": "extract"})
    builder.add_edge("extract", END)
    return builder.compile(checkpointer=checkpointer, name="interview")


def build_graph(
    config: GraphConfig,
    *,
    gateway: Gateway,
    embedder: Embedder | None = None,
    memory: Any = None,
    prompts: PromptSet | None = None,
    checkpointer: Any = None,
    answer_schema: type[BaseModel] | None = None,
):
    """The prebuilt graph ``config.kind`` names."""
    deps = {"gateway": gateway, "embedder": embedder, "memory": memory, "prompts": prompts, "checkpointer": checkpointer}
    if config.kind == "dyad":
        return dyad(config, **deps)
    if config.kind == "group":
        return group(config, **deps)
    return interview(config, answer_schema=answer_schema or InterviewAnswers, **deps)
