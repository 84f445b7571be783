"""Graph factories for LangGraph Studio (``langgraph dev``), referenced by ``langgraph.json``.

Studio loads a graph by path and, for a factory, calls it with the run's config. These
factories build the prebuilt graphs on the model and embedder the settings select
(environment, ``personae.yaml``): a configured endpoint when there is one, otherwise the
embedded local model. Nothing is built on import and no model is loaded when a graph is
built; the local model and the embedder load on their first call.

Graphs are compiled without a checkpointer: the LangGraph server attaches its own. Start
a conversation in Studio with an input made by :func:`personae.nodes.initial_state` (or
:func:`personae.graphs.runner.job_state`), and ``conversation_id``/``seed`` as context.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig

from personae.graphs.config import GraphConfig

__all__ = ["dyad", "group", "interview", "STUDIO_QUESTIONS"]

# The interview Studio shows: a short generic survey (a real one sets questions in its experiment).
STUDIO_QUESTIONS = (
    "How do you usually spend a working day?",
    "What matters most to you when you choose where to shop?",
    "What would you change about your neighbourhood?",
)


def _dependencies() -> dict[str, Any]:
    """The gateway and embedder the settings select, both lazy (nothing loads until a call)."""
    from personae.embeddings import build_embedder
    from personae.llm import build_gateway
    from personae.settings import Settings

    settings = Settings.load()
    gateway = build_gateway(settings)
    return {"gateway": gateway, "embedder": build_embedder(settings, gateway=gateway)}


def dyad(config: RunnableConfig | None = None):
    """A two-party conversation (:func:`personae.graphs.prebuilt.dyad`) with default settings."""
    from personae.graphs import prebuilt

    return prebuilt.dyad(GraphConfig(kind="dyad"), **_dependencies())


def group(config: RunnableConfig | None = None):
    """A moderated group discussion (:func:`personae.graphs.prebuilt.group`) with default settings."""
    from personae.graphs import prebuilt

    return prebuilt.group(GraphConfig(kind="group"), **_dependencies())


def interview(config: RunnableConfig | None = None):
    """A survey interview (:func:`personae.graphs.prebuilt.interview`) asking :data:`STUDIO_QUESTIONS`."""
    from personae.graphs import prebuilt

    return prebuilt.interview(GraphConfig(kind="interview", questions=list(STUDIO_QUESTIONS)), **_dependencies())
