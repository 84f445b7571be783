"""A small in-process summary of each agent's memory stream.

It keeps what retrieval and reflection need without a filtered scan of the
store (slow in Qdrant local mode): the insertion counter, the latest step, the
importance accumulated since the last reflection, a small entry (id, step,
importance, kind, conversation) per memory in insertion order, and the most
important memories. It is rebuilt from the stored payloads on
first use, so it survives restarts.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "AgentState", "SEQ_KEY", "COVERS_KEY"]

SEQ_KEY = "_seq"  # per-agent insertion counter, private payload key
COVERS_KEY = "_covers_seq"  # on reflections: the last insertion the reflection covered


@dataclass(frozen=True, slots=True)
class Entry:
    """What the summary remembers about one stored memory."""

    point_id: str
    seq: int
    step: int
    importance: float
    kind: str
    conversation_id: str | None

    @classmethod
    def from_payload(cls, point_id: str, payload: Mapping[str, Any]) -> Entry:
        return cls(
            point_id=str(point_id),
            seq=int(payload.get(SEQ_KEY, 0)),
            step=int(payload["step"]),
            importance=float(payload["importance"]),
            kind=str(payload["kind"]),
            conversation_id=payload.get("conversation_id"),
        )


@dataclass
class AgentState:
    """The summary of one agent. Not thread-safe: callers hold the store lock."""

    important_size: int = 16
    next_seq: int = 0
    last_step: int = -1
    covers_seq: int = -1
    pending: list[tuple[int, float]] = field(default_factory=list)  # (seq, importance) of observations since covers_seq
    entries: list[Entry] = field(default_factory=list)  # every memory, in insertion order
    important: list[tuple[float, int, Entry]] = field(default_factory=list)  # min-heap of the top memories

    @property
    def pending_importance(self) -> float:
        """Importance of the observations since the last reflection."""
        return float(sum(imp for _, imp in self.pending))

    def add(self, entry: Entry, covers: int | None = None) -> None:
        """Account for a newly stored memory (in insertion order)."""
        self.next_seq = max(self.next_seq, entry.seq + 1)
        self.last_step = max(self.last_step, entry.step)
        self.entries.append(entry)
        item = (entry.importance, entry.seq, entry)
        if len(self.important) < self.important_size:
            heapq.heappush(self.important, item)
        elif item[:2] > self.important[0][:2]:
            heapq.heapreplace(self.important, item)
        if entry.kind == "observation":
            if entry.seq > self.covers_seq:
                self.pending.append((entry.seq, entry.importance))
        elif covers is not None:
            self.mark_covered(covers)

    def mark_covered(self, covers: int) -> None:
        """A reflection covered every insertion up to ``covers``."""
        self.covers_seq = max(self.covers_seq, covers)
        self.pending = [p for p in self.pending if p[0] > self.covers_seq]

    def claim(self, threshold: float, window: int) -> tuple[int, int, list[tuple[int, float]], list[Entry]] | None:
        """Start a reflection if the pending importance reached ``threshold``.

        Returns ``(covers, previous covers, claimed pending, window entries)`` and
        resets the accumulator, or ``None`` when no reflection is due.
        """
        if self.pending_importance < threshold:
            return None
        claimed = (self.next_seq - 1, self.covers_seq, self.pending, self.entries[-window:])
        self.covers_seq, self.pending = claimed[0], []
        return claimed

    def unclaim(self, previous_covers: int, claimed: list[tuple[int, float]]) -> None:
        """Undo :meth:`claim` after a failed reflection."""
        self.covers_seq = previous_covers
        self.pending = claimed + self.pending

    def candidates(self, n_recent: int) -> list[Entry]:
        """The ``n_recent`` most recent memories plus the most important ones."""
        recent = self.entries[-n_recent:] if n_recent > 0 else []
        seen = {e.point_id for e in recent}
        return recent + [e for _, _, e in sorted(self.important, reverse=True) if e.point_id not in seen]

    @classmethod
    def rebuild(cls, entries: Iterable[tuple[Entry, int | None]], *, important_size: int = 16) -> AgentState:
        """A summary rebuilt from stored ``(entry, covers)`` pairs, in any order."""
        state = cls(important_size=important_size)
        for entry, covers in sorted(entries, key=lambda pair: pair[0].seq):
            state.add(entry, covers)
        return state
