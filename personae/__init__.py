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
)
from personae.jsonl import append_jsonl, read_jsonl, write_jsonl
from personae.llm import Budget, Gateway, LLMRequest, LLMResponse, Message, build_gateway
from personae.models import (
    BigFive,
    Conversation,
    ConversationStatus,
    Participant,
    Persona,
    Role,
    Scenario,
    StopReason,
    Utterance,
)
from personae.settings import Settings

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BigFive",
    "Budget",
    "BudgetExceeded",
    "ConfigError",
    "Conversation",
    "ConversationStatus",
    "Gateway",
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
    "append_jsonl",
    "build_gateway",
    "read_jsonl",
    "write_jsonl",
]
