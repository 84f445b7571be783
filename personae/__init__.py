"""personae: persona-driven multi-agent simulation.

Generate populations of synthetic people, simulate them in conversations built as
LangGraph state machines, evaluate how faithfully they stay in character, and run it
all as Prefect flows tracked in MLflow. Importing personae has no side effects.
"""

from personae.errors import (
    BudgetExceeded,
    ConfigError,
    MissingExtra,
    ModelCallError,
    ModelOutputError,
    PersonaeError,
    StoreLockedError,
    UnsupportedFeature,
    WorkerProcessError,
)
from personae.jsonl import append_jsonl, read_jsonl, write_jsonl
from personae.llm import Budget, Gateway, LLMRequest, LLMResponse, Message, build_gateway
from personae.models import (
    BigFive,
    Conversation,
    ConversationStatus,
    Intervention,
    Participant,
    Persona,
    Role,
    Scenario,
    StopReason,
    Utterance,
)
from personae.settings import Settings

__version__ = "0.1.0"

# The heavier layers (LangGraph, Qdrant, the population engine) load on first use, so
# `import personae` and the CLI's --help stay fast.
_LAZY = {
    "GraphConfig": "personae.graphs",
    "dyad": "personae.graphs",
    "group": "personae.graphs",
    "interview": "personae.graphs",
    "build_graph": "personae.graphs",
    "make_jobs": "personae.graphs",
    "Sessions": "personae.graphs",
    "run_conversation": "personae.graphs",
    "simulate_batch": "personae.graphs",
    "project_egocentric": "personae.graphs",
    "project_concat": "personae.graphs",
    "AgentMemory": "personae.memory",
    "open_qdrant": "personae.memory",
    "PopulationSpec": "personae.population",
    "generate_population": "personae.population",
    "sample_population": "personae.population",
    "EvaluationConfig": "personae.evaluation",
    "evaluate_run": "personae.evaluation",
    "evaluate_probes": "personae.evaluation",
    "compare_arms": "personae.evaluation",
    "Scorecard": "personae.evaluation",
    "build_embedder": "personae.embeddings",
    "HashingEmbedder": "personae.embeddings",
    "LangChainLLM": "personae.llm.langchain_provider",
    "LangChainEmbedder": "personae.embeddings.langchain",
    "ExportOptions": "personae.export",
    "export_run": "personae.export",
    "Instrument": "personae.survey",
    "load_instrument": "personae.survey",
    "run_survey": "personae.survey",
    "load_targets": "personae.survey",
    "realism_report": "personae.survey",
    "ModelPrice": "personae.costs",
    "RunBudget": "personae.costs",
    "estimate_experiment": "personae.estimate",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'personae' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "__version__",
    *sorted(_LAZY),
    "BigFive",
    "Budget",
    "BudgetExceeded",
    "ConfigError",
    "Conversation",
    "ConversationStatus",
    "Gateway",
    "Intervention",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "MissingExtra",
    "ModelCallError",
    "ModelOutputError",
    "Participant",
    "Persona",
    "PersonaeError",
    "Role",
    "Scenario",
    "Settings",
    "StopReason",
    "StoreLockedError",
    "UnsupportedFeature",
    "Utterance",
    "WorkerProcessError",
    "append_jsonl",
    "build_gateway",
    "read_jsonl",
    "write_jsonl",
]
