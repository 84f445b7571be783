"""Simulation graphs: prebuilt dyad, group and interview graphs, and the batch runner.

The state, projection and nodes they are composed of live in :mod:`personae.nodes`
and are re-exported here for convenience.
"""

from personae.graphs.chat import ChatSession
from personae.graphs.config import GraphConfig, MemoryConfig, validate_conversation
from personae.graphs.prebuilt import build_graph, dyad, fuse_nodes, group, interview, recursion_limit
from personae.graphs.sessions import Sessions
from personae.graphs.runner import (
    BatchResult,
    ConversationJob,
    done_ids,
    job_state,
    latest_conversations,
    make_jobs,
    run_conversation,
    simulate_batch,
)
from personae.nodes.projection import project_concat, project_egocentric, render_system_prompt
from personae.nodes.state import DialogueState, RunContext, initial_state, merge_by_id

__all__ = [
    "BatchResult",
    "ChatSession",
    "ConversationJob",
    "DialogueState",
    "GraphConfig",
    "MemoryConfig",
    "RunContext",
    "Sessions",
    "build_graph",
    "done_ids",
    "dyad",
    "fuse_nodes",
    "group",
    "initial_state",
    "interview",
    "job_state",
    "latest_conversations",
    "make_jobs",
    "merge_by_id",
    "project_concat",
    "project_egocentric",
    "recursion_limit",
    "render_system_prompt",
    "run_conversation",
    "simulate_batch",
    "validate_conversation",
]
