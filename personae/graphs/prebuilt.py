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
from langgraph.runtime import Runtime
from pydantic import BaseModel

from personae.embeddings.base import Embedder
from personae.errors import ConfigError
from personae.graphs.config import GraphConfig
from personae.llm.gateway import Gateway
from personae.nodes.critic import make_critic_node, route_after_critic
from personae.nodes.events import make_event_node
from personae.nodes.interview import InterviewAnswers, make_extract_node, make_question_node, route_by_speaker
from personae.nodes.orchestrator import CustomPolicy, make_orchestrator_node
from personae.nodes.persona import make_persona_node
from personae.nodes.state import DialogueState, RunContext, merge_by_id
from personae.nodes.termination import TerminationConfig, make_termination_node, route_after_termination
from personae.prompts import PromptSet

__all__ = ["dyad", "group", "interview", "build_graph", "recursion_limit", "fuse_nodes"]

log = logging.getLogger(__name__)


def _inline(route: Callable[[DialogueState], str]) -> Callable[[DialogueState], Awaitable[str]]:
    """``route`` as a coroutine function: LangGraph runs a sync router in a thread pool on
    every step (about a tenth of a turn's CPU in ``bench/overhead.py``); an async one inline."""

    async def routed(state: DialogueState) -> str:
        return route(state)

    routed.__name__ = route.__name__
    return routed


Node = Callable[..., Awaitable[dict[str, Any]]]


def fuse_nodes(*steps: Node | tuple[Node, Callable[[DialogueState], bool]], name: str = "fused") -> Node:
    """One graph node that runs several nodes in order, as one LangGraph step.

    Each step is a node, or ``(node, runs_if)`` where ``runs_if(state)`` decides on the
    state as the earlier steps left it (e.g. the orchestrator only while no stop reason
    is set). Later steps see earlier steps' updates (the transcript merged by id); the
    fused node returns all updates together. A LangGraph step has a fixed cost in CPU
    and, with a checkpointer, one checkpoint write: a dyad turn fused from
    persona → termination → orchestrator costs one step instead of three. A step that
    raises fails the whole fused step, which a rerun repeats from its start.
    """
    plan = [step if isinstance(step, tuple) else (step, None) for step in steps]

    async def fused(state: DialogueState, runtime: Runtime[RunContext] | None = None) -> dict[str, Any]:
        view: dict[str, Any] = dict(state)
        update: dict[str, Any] = {}
        for node, runs_if in plan:
            if runs_if is not None and not runs_if(view):  # type: ignore[arg-type]
                break
            for key, value in (await node(view, runtime) or {}).items():
                if key == "transcript":
                    view[key] = merge_by_id(view.get(key), value)
                    update[key] = merge_by_id(update.get(key), value)
                else:
                    view[key] = update[key] = value
        return update

    fused.__name__ = name
    return fused


def _running(state: DialogueState) -> bool:
    return not state.get("stop_reason")


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
    orchestrator: Node,
    *,
    gateway: Gateway,
    embedder: Embedder | None,
    memory: Any,
    prompts: PromptSet | None,
) -> tuple[list[Any], list[str]]:
    """Add a turn of ``speaker`` (a persona node): speaker → [critic ⟲ speaker] → end of turn.

    The end of a turn, [memory] → termination → orchestrator (the orchestrator only
    while the conversation goes on), runs as one fused step (``"end_of_turn"``);
    without a critic the speaker joins it, so a turn is a single LangGraph step.

    Returns the end-of-turn steps (to fuse into another speaker's node, e.g. an
    interviewer) and the nodes after which the graph routes on ``stop_reason``.
    """
    memory_node, retriever = _memory_parts(config, memory, gateway, prompts)
    persona = make_persona_node(
        gateway, prompts=prompts, projection=config.projection, window=config.window, window_block=config.block, retriever=retriever,
        review=config.critic.enabled, temperature=config.temperature, max_tokens=config.max_tokens,
    )
    end_of_turn = [
        *([memory_node] if memory_node is not None else []),
        make_termination_node(termination, gateway=gateway, embedder=embedder, prompts=prompts),
        (orchestrator, _running),
    ]
    if not config.critic.enabled:
        builder.add_node(speaker, fuse_nodes(persona, *end_of_turn, name=speaker))
        return end_of_turn, [speaker]
    builder.add_node(speaker, persona)
    builder.add_node("critic", make_critic_node(config.critic, gateway=gateway, embedder=embedder, prompts=prompts, termination=termination))
    builder.add_node("end_of_turn", fuse_nodes(*end_of_turn, name="end_of_turn"))
    builder.add_edge(speaker, "critic")
    builder.add_conditional_edges("critic", _inline(route_after_critic), {"revise": speaker, "accept": "end_of_turn"})
    return end_of_turn, ["end_of_turn"]


def _conversation(
    config: GraphConfig,
    *,
    gateway: Gateway,
    embedder: Embedder | None,
    memory: Any,
    prompts: PromptSet | None,
    turn_policy: CustomPolicy | None,
) -> StateGraph:
    """orchestrator → persona → [critic ⟲ persona] → end of turn ⟲ persona (see :func:`_add_turn`).

    With ``config.events`` the event node runs right before the orchestrator, at the start
    and at the end of every turn, in the same fused step: an event due after turn *n* is in
    the transcript when the next speaker is chosen and speaks.
    """
    builder = StateGraph(DialogueState, context_schema=RunContext)
    orchestrator = make_orchestrator_node(
        turn_policy or config.policy, gateway=gateway, opener=config.opener, prompts=prompts,
        moderator_attempts=config.moderator_attempts,
    )
    if config.events:
        orchestrator = fuse_nodes(make_event_node(config.events), orchestrator, name="orchestrator")
    builder.add_node("orchestrator", orchestrator)
    _, route_from = _add_turn(builder, "persona", config, config.termination, orchestrator, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts)
    builder.add_edge(START, "orchestrator")
    builder.add_edge("orchestrator", "persona")
    for node in route_from:
        builder.add_conditional_edges(node, _inline(route_after_termination), {"continue": "persona", "stop": END})
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
    orchestrator = make_orchestrator_node("alternate", opener=config.opener)
    builder.add_node("orchestrator", orchestrator)
    termination = config.termination.model_copy(
        update={"detector": False, "closing": False, "max_turns": config.termination.max_turns or 2 * len(config.questions)}
    )
    end_of_turn, route_from = _add_turn(builder, "respondent", config, termination, orchestrator, gateway=gateway, embedder=embedder, memory=memory, prompts=prompts)
    question = make_question_node(gateway=gateway, phrase=config.phrase_questions, prompts=prompts)
    builder.add_node("interviewer", fuse_nodes(question, *end_of_turn, name="interviewer"))
    builder.add_node("extract", make_extract_node(gateway, answer_schema, prompts=prompts))
    builder.add_edge(START, "orchestrator")
    builder.add_conditional_edges("orchestrator", _inline(route_by_speaker), {"interviewer": "interviewer", "respondent": "respondent"})
    routes = {"stop": "extract", "interviewer": "interviewer", "respondent": "respondent"}
    for node in [*route_from, "interviewer"]:
        builder.add_conditional_edges(node, _inline(_after_interview_turn), routes)
    builder.add_edge("extract", END)
    return builder.compile(checkpointer=checkpointer, name="interview")


def _after_interview_turn(state: DialogueState) -> str:
    return "stop" if route_after_termination(state) == "stop" else route_by_speaker(state)


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
