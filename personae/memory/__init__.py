"""Agent memory on Qdrant: memory streams with recency·importance·relevance retrieval,
reflection, and long-term memory across conversations."""

from personae.memory.agent_memory import DEFAULT_REFLECTION_THRESHOLD, AgentMemory
from personae.memory.importance import heuristic_importance
from personae.memory.qdrant import MigrationReport, QdrantHandle, migrate_local_store, open_qdrant
from personae.memory.records import MemoryKind, MemoryRecord, Observation, ScoredMemory, memory_id

__all__ = [
    "AgentMemory",
    "DEFAULT_REFLECTION_THRESHOLD",
    "MemoryKind",
    "MemoryRecord",
    "MigrationReport",
    "Observation",
    "QdrantHandle",
    "ScoredMemory",
    "heuristic_importance",
    "memory_id",
    "migrate_local_store",
    "open_qdrant",
]
