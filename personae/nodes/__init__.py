"""Graph nodes as factories: each takes its dependencies and returns an async LangGraph node.

Compose them into your own ``StateGraph(DialogueState, context_schema=RunContext)``
or use the prebuilt graphs in :mod:`personae.graphs`. The memory node lives in
:mod:`personae.nodes.memory` (it needs Qdrant).
"""

from personae.nodes.critic import ConstraintRule, CriticConfig, CriticJudgement, make_critic_node, route_after_critic
from personae.nodes.events import make_event_node
from personae.nodes.interview import (
    InterviewAnswers,
    QuestionAnswer,
    make_extract_node,
    make_question_node,
    route_by_speaker,
)
from personae.nodes.orchestrator import CustomPolicy, TurnView, make_orchestrator_node, pick_opener
from personae.nodes.persona import Retriever, make_persona_node
from personae.nodes.projection import project, project_concat, project_egocentric, render_system_prompt
from personae.nodes.state import DialogueState, RunContext, derive_seed, initial_state, merge_by_id
from personae.nodes.termination import (
    EndDetection,
    TerminationConfig,
    make_termination_node,
    route_after_termination,
)

__all__ = [
    "ConstraintRule",
    "CriticConfig",
    "CriticJudgement",
    "CustomPolicy",
    "DialogueState",
    "EndDetection",
    "InterviewAnswers",
    "QuestionAnswer",
    "Retriever",
    "RunContext",
    "TerminationConfig",
    "TurnView",
    "derive_seed",
    "initial_state",
    "make_critic_node",
    "make_event_node",
    "make_extract_node",
    "make_orchestrator_node",
    "make_persona_node",
    "make_question_node",
    "make_termination_node",
    "merge_by_id",
    "pick_opener",
    "project",
    "project_concat",
    "project_egocentric",
    "render_system_prompt",
    "route_after_critic",
    "route_after_termination",
    "route_by_speaker",
]
