"""Agent memory on Qdrant (Generative Agents, LD-Agent): observe, retrieve, reflect.

Every agent (persona id) has one memory stream shared across conversations, so
memories are long-term. Retrieval scores candidates by recency (on a logical
step clock), importance and relevance. Reflection turns recent memories into
insights once enough importance has accumulated.

A small per-agent summary (ids, steps, importances, insertion counter,
accumulated importance) lives in process and is rebuilt from the store on first
use (one indexed, filtered scroll per agent; one scroll of the whole collection in
qdrant-client local mode, which filters in pure Python). Retrieval from an
embedded store fetches an agent's memories by id and scores all of them exactly,
as Generative Agents does; past ``exhaustive_limit`` memories, and always against
a server, it scores the hits of one filtered vector search (``k ×
candidate_factor``) plus the agent's most recent and most important memories. Writes are batched. Client calls run in a
worker thread under ``handle.lock``, so the async API never blocks the loop and
many conversations can share one memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client import models

from personae.embeddings.base import Embedder, normalize
from personae.errors import ConfigError, ModelOutputError
from personae.ids import content_hash
from personae.llm.gateway import Gateway
from personae.memory._agent_state import COVERS_KEY, SEQ_KEY, AgentState, Entry
from personae.memory._collection import MemoryCollection, agent_filter
from personae.memory.importance import heuristic_importance, rate_importance
from personae.memory.qdrant import QdrantHandle
from personae.memory.records import MemoryKind, MemoryRecord, Observation, ScoredMemory, memory_id, point_id
from personae.memory.reflection import generate_insights
from personae.memory.scoring import combine, recency
from personae.prompts import PromptSet
from personae.validation import validate_data

__all__ = ["AgentMemory", "DEFAULT_REFLECTION_THRESHOLD"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_REFLECTION_THRESHOLD = 4.0
"""Accumulated importance (sum over observations, each in [0, 1]) that triggers a reflection."""

_STATE_FIELDS = ["agent_id", "step", "importance", "kind", "conversation_id", SEQ_KEY, COVERS_KEY]
_EMBED_BATCH = 256


def _record(payload: dict[str, Any]) -> MemoryRecord:
    return MemoryRecord.model_validate({k: v for k, v in payload.items() if not k.startswith("_")})


class AgentMemory:
    """Memory streams of many agents in one Qdrant collection.

    Steps: recency compares the steps of one agent, so give each agent a clock
    that keeps growing across its conversations, e.g. start a conversation at
    ``await memory.last_step(agent) + 1`` and keep that base in the graph state
    so a resumed run reuses it (memories with a step after ``now_step`` count
    as fresh). Use one ``AgentMemory`` per collection per process: its
    in-process summary assumes it sees every write (with a server and several
    processes, give each process its own agents).

    Args:
        handle: an open Qdrant (local path or server), see :func:`open_qdrant`.
        embedder: turns memory texts and queries into vectors.
        collection: collection name; created on first use with ``embedder.dim``.
        weights: ``(recency, importance, relevance)`` weights of the retrieval score.
        recency_decay: per-step decay of recency, in (0, 1].
        importance_gateway: when given, memories observed without an importance are
            rated by this model (prompt ``memory_importance``); otherwise by
            :func:`heuristic_importance`.
        prompts: prompt set overriding the packaged templates.
        exhaustive_limit: in an embedded store, an agent with at most this many (matching)
            memories has all of them scored; above it, candidates are searched.
        candidate_factor: the vector search fetches ``k × candidate_factor`` candidates.
        recent_candidates: this many of the agent's latest memories are always candidates.
        reflection_window: how many recent memories a reflection looks at.
        reflection_importance: importance given to reflections (above typical observations).
    """

    def __init__(
        self,
        handle: QdrantHandle,
        embedder: Embedder,
        *,
        collection: str = "personae_memory",
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        recency_decay: float = 0.95,
        importance_gateway: Gateway | None = None,
        prompts: PromptSet | None = None,
        exhaustive_limit: int = 1000,
        candidate_factor: int = 4,
        recent_candidates: int = 32,
        reflection_window: int = 30,
        reflection_importance: float = 0.9,
    ) -> None:
        if len(weights) != 3 or any(w < 0 for w in weights) or not any(weights):
            raise ConfigError("bad retrieval weights", field="memory.weights", expected="three non-negative numbers (recency, importance, relevance), not all 0", got=weights)
        if not 0 < recency_decay <= 1:
            raise ConfigError("bad recency decay", field="memory.recency_decay", expected="a number in (0, 1]", got=recency_decay)
        if exhaustive_limit < 0 or candidate_factor < 1 or recent_candidates < 0 or reflection_window < 1:
            raise ConfigError(
                "bad candidate sizes", field="memory",
                expected="exhaustive_limit >= 0, candidate_factor >= 1, recent_candidates >= 0, reflection_window >= 1",
                got=(exhaustive_limit, candidate_factor, recent_candidates, reflection_window),
            )
        if not 0 <= reflection_importance <= 1:
            raise ConfigError("bad reflection importance", field="memory.reflection_importance", expected="a number in [0, 1]", got=reflection_importance)
        self.handle = handle
        self.embedder = embedder
        self.weights = tuple(float(w) for w in weights)
        self.recency_decay = recency_decay
        self.importance_gateway = importance_gateway
        self.prompts = prompts
        self.exhaustive_limit = exhaustive_limit
        self.candidate_factor = candidate_factor
        self.recent_candidates = recent_candidates
        self.reflection_window = reflection_window
        self.reflection_importance = reflection_importance
        self._store = MemoryCollection(handle, collection, dim=embedder.dim, embedder_name=embedder.name)
        self._lock = handle.lock
        self._states: dict[str, AgentState] = {}
        self._all_loaded = False

    @property
    def collection(self) -> str:
        """The Qdrant collection name."""
        return self._store.name

    # ---- plumbing ----------------------------------------------------------
    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return fn(*args)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._locked, fn, *args)

    def _rebuild(self, points: Iterable[models.Record]) -> dict[str, AgentState]:
        grouped: dict[str, list[tuple[Entry, int | None]]] = {}
        for p in points:
            payload = p.payload or {}
            grouped.setdefault(payload["agent_id"], []).append((Entry.from_payload(str(p.id), payload), payload.get(COVERS_KEY)))
        return {agent: AgentState.rebuild(entries) for agent, entries in grouped.items()}

    def _state(self, agent_id: str) -> AgentState:
        """The agent's summary, loaded from the store on first use (lock held)."""
        self._store.ensure()
        state = self._states.get(agent_id)
        if state is not None:
            return state
        if self.handle.backend == "local":
            # one pass over the whole collection beats one pure-Python filtered scan per agent
            if not self._all_loaded:
                self._states.update(self._rebuild(self._store.scroll(None, payload=_STATE_FIELDS)))
                self._all_loaded = True
                state = self._states.get(agent_id)
        else:
            state = self._rebuild(self._store.scroll(agent_filter(agent_id), payload=_STATE_FIELDS)).get(agent_id)
        if state is None:
            state = AgentState()
        self._states[agent_id] = state
        return state

    def _insert(self, items: Sequence[tuple[MemoryRecord, np.ndarray, int | None]]) -> tuple[dict[str, MemoryRecord], int]:
        """Store new records (skipping ids already stored); return id → stored record and how many were new."""
        for record, _, _ in items:
            self._state(record.agent_id)
        pids = [point_id(r.id) for r, _, _ in items]
        stored = {str(p.id): _record(p.payload or {}) for p in self._store.get(pids)}
        out: dict[str, MemoryRecord] = {r.id: stored[pid] for (r, _, _), pid in zip(items, pids) if pid in stored}
        next_seq = {r.agent_id: self._states[r.agent_id].next_seq for r, _, _ in items}
        points: list[models.PointStruct] = []
        added: list[tuple[str, Entry, int | None]] = []
        for (record, vector, covers), pid in zip(items, pids):
            if record.id in out:
                continue
            seq = next_seq[record.agent_id]
            next_seq[record.agent_id] += 1
            payload = record.model_dump(mode="json") | {SEQ_KEY: seq}
            if record.kind == "reflection":
                covers = seq - 1 if covers is None else covers
                payload[COVERS_KEY] = covers
            points.append(models.PointStruct(id=pid, vector=np.asarray(vector, dtype=np.float32).tolist(), payload=payload))
            added.append((record.agent_id, Entry.from_payload(pid, payload), covers))
            out[record.id] = record
        if points:
            self._store.upsert(points)
        for agent_id, entry, covers in added:
            self._states[agent_id].add(entry, covers)
        return out, len(points)

    def _embed_checked(self, vectors: np.ndarray, n: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (n, self.embedder.dim):
            raise ConfigError("the embedder returned vectors of the wrong shape", field="embedder", expected=f"({n}, {self.embedder.dim})", got=vectors.shape)
        return vectors

    # ---- writing -------------------------------------------------------------
    async def observe(
        self,
        agent_id: str,
        text: str,
        *,
        step: int,
        importance: float | None = None,
        conversation_id: str | None = None,
        kind: MemoryKind = "observation",
        metadata: dict[str, Any] | None = None,
    ) -> MemoryRecord:
        """Store one memory of ``agent_id`` and return it.

        The id is stable over ``(agent_id, conversation_id, step, kind, text)``:
        observing the same thing again returns the stored record unchanged (so
        resumed runs neither duplicate memories nor count importance twice).
        """
        item = validate_data(
            Observation,
            {"agent_id": agent_id, "text": text, "step": step, "importance": importance, "conversation_id": conversation_id, "kind": kind, "metadata": metadata or {}},
            what="memory observation",
        )
        return (await self.observe_many([item]))[0]

    async def observe_many(self, observations: Sequence[Observation]) -> list[MemoryRecord]:
        """Store several memories (any agents) with one embedding call and one batched write."""
        if not observations:
            return []
        ids = [o.record_id for o in observations]
        known = await self._call(lambda: {str(p.id): _record(p.payload or {}) for p in self._existing(ids)})
        fresh: dict[str, Observation] = {}
        for rid, obs in zip(ids, observations):
            if point_id(rid) not in known and rid not in fresh:
                fresh[rid] = obs
        items: list[tuple[MemoryRecord, np.ndarray, int | None]] = []
        if fresh:
            todo = list(fresh.items())
            importances = await asyncio.gather(*(self._importance(rid, obs) for rid, obs in todo))
            vectors = self._embed_checked(await self.embedder.aembed([obs.text for _, obs in todo]), len(todo))
            for (rid, obs), imp, vec in zip(todo, importances, vectors):
                record = MemoryRecord(
                    id=rid, agent_id=obs.agent_id, text=obs.text, kind=obs.kind, importance=imp,
                    step=obs.step, conversation_id=obs.conversation_id, metadata=obs.metadata,
                )
                items.append((record, vec, None))
        stored, _ = await self._call(self._insert, items) if items else ({}, 0)
        return [known.get(point_id(rid)) or stored[rid] for rid in ids]

    def _existing(self, record_ids: Sequence[str]) -> list[models.Record]:
        self._store.ensure()
        return self._store.get([point_id(r) for r in record_ids])

    async def _importance(self, record_id: str, obs: Observation) -> float:
        if obs.importance is not None:
            return obs.importance
        if self.importance_gateway is None:
            return heuristic_importance(obs.text)
        try:
            return await rate_importance(self.importance_gateway, obs.text, key=record_id, prompts=self.prompts)
        except ModelOutputError as exc:
            log.warning("importance model gave no usable rating for %s (%s); using the heuristic", record_id, exc.message)
            return heuristic_importance(obs.text)

    # ---- reading -------------------------------------------------------------
    async def retrieve(
        self,
        agent_id: str,
        query: str,
        *,
        k: int = 5,
        now_step: int | None = None,
        conversation_id: str | None = None,
        exclude_conversation_id: str | None = None,
        kinds: Sequence[MemoryKind] | None = None,
        hide_from: tuple[str, int] | None = None,
    ) -> list[ScoredMemory]:
        """The ``k`` best memories of ``agent_id`` for ``query``, best first.

        ``now_step`` defaults to the agent's latest step. ``conversation_id``
        restricts to one conversation, ``exclude_conversation_id`` leaves one out
        (e.g. recall only earlier sessions), ``kinds`` restricts the kinds.
        ``hide_from=(conversation, step)`` leaves out that conversation's memories at
        ``step`` or later before scoring: a run killed after its memory write but before
        its checkpoint leaves memories "from the future" of the resumed conversation,
        and they must not change what it retrieves.
        """
        if k < 1:
            raise ConfigError("k must be at least 1", field="k", expected="an integer >= 1", got=k)
        qvec = normalize(self._embed_checked(await self.embedder.aembed([query]), 1))[0]
        flt = agent_filter(agent_id, conversation_id=conversation_id, exclude_conversation_id=exclude_conversation_id, kinds=kinds)
        points, last_step = await self._call(self._candidates, agent_id, qvec, k, flt, conversation_id, exclude_conversation_id, kinds)
        if hide_from is not None:
            hidden_conversation, hidden_step = hide_from
            points = [
                p for p in points
                if not ((p.payload or {}).get("conversation_id") == hidden_conversation and int((p.payload or {}).get("step", 0)) >= hidden_step)
            ]
        if not points:
            return []
        now = last_step if now_step is None else now_step
        records = [_record(p.payload or {}) for p in points]
        vectors = np.asarray([p.vector for p in points], dtype=np.float32)
        steps = np.array([r.step for r in records], dtype=np.float64)
        score, rec, imp, rel = combine(
            recency(steps, now, self.recency_decay),
            np.array([r.importance for r in records]),
            normalize(vectors) @ qvec,
            self.weights,
        )
        order = sorted(range(len(records)), key=lambda j: (-score[j], -steps[j], records[j].id))[:k]
        return [
            ScoredMemory(record=records[j], score=float(score[j]), recency=float(rec[j]), importance=float(imp[j]), relevance=float(rel[j]))
            for j in order
        ]

    def _candidates(
        self,
        agent_id: str,
        qvec: np.ndarray,
        k: int,
        flt: models.Filter | None,
        conversation_id: str | None,
        exclude_conversation_id: str | None,
        kinds: Sequence[str] | None,
    ) -> tuple[list[Any], int]:
        state = self._state(agent_id)

        def wanted(e: Entry) -> bool:
            return (
                (conversation_id is None or e.conversation_id == conversation_id)
                and (exclude_conversation_id is None or e.conversation_id != exclude_conversation_id)
                and (not kinds or e.kind in kinds)
            )

        if self.handle.is_local:
            pool = [e.point_id for e in state.entries if wanted(e)]
            if len(pool) <= self.exhaustive_limit:
                return self._store.get(pool, vectors=True), state.last_step
        points: list[Any] = []
        if float(np.linalg.norm(qvec)) > 0:
            points = self._store.search(qvec, flt, max(k * self.candidate_factor, k))
        have = {str(p.id) for p in points}
        extra = [e.point_id for e in state.candidates(self.recent_candidates) if e.point_id not in have and wanted(e)]
        points.extend(self._store.get(extra, vectors=True))
        return points, state.last_step

    async def last_step(self, agent_id: str) -> int:
        """The latest step among the agent's memories (-1 if none): a base for an agent-wide clock."""
        return await self._call(lambda: self._state(agent_id).last_step)

    async def pending_importance(self, agent_id: str) -> float:
        """Importance accumulated since the agent's last reflection."""
        return await self._call(lambda: self._state(agent_id).pending_importance)

    # ---- reflecting ------------------------------------------------------------
    async def reflect_if_due(
        self,
        agent_id: str,
        gateway: Gateway,
        *,
        threshold: float = DEFAULT_REFLECTION_THRESHOLD,
        now_step: int,
        seed: int | None = None,
        conversation_id: str | None = None,
        agent_name: str | None = None,
    ) -> list[MemoryRecord]:
        """Reflect when the importance accumulated since the last reflection reaches ``threshold``.

        Asks ``gateway`` (role ``reflection``, prompt ``memory_reflection``) for 1–3
        insights over the agent's latest memories and stores them as
        ``kind="reflection"`` records at ``now_step`` citing their sources in
        ``metadata["source_ids"]``. Returns the new reflections, or ``[]`` when none
        is due. ``seed`` is passed to the model; ``None`` derives one from the agent
        and step, so reruns hit the cache. On failure the accumulator is restored
        and the error (e.g. :class:`ModelOutputError`) propagates.
        """
        if threshold <= 0:
            raise ConfigError("the reflection threshold must be positive", field="threshold", expected="a number > 0", got=threshold)
        claim = await self._call(lambda: self._state(agent_id).claim(threshold, self.reflection_window))
        if claim is None:
            return []
        covers, previous, claimed, window = claim
        try:
            return await self._reflect(agent_id, gateway, covers, window, now_step=now_step, seed=seed, conversation_id=conversation_id, agent_name=agent_name)
        except BaseException:
            with self._lock:
                self._states[agent_id].unclaim(previous, claimed)
            raise

    async def _reflect(
        self,
        agent_id: str,
        gateway: Gateway,
        covers: int,
        window: list[Entry],
        *,
        now_step: int,
        seed: int | None,
        conversation_id: str | None,
        agent_name: str | None,
    ) -> list[MemoryRecord]:
        by_id = {str(p.id): _record(p.payload or {}) for p in await self._call(self._store.get, [e.point_id for e in window])}
        sources = [by_id[e.point_id] for e in window if e.point_id in by_id]
        if seed is None:
            seed = int(content_hash(["reflection", agent_id, now_step, [s.id for s in sources]], length=8), 16)
        insights = await generate_insights(gateway, sources, agent=agent_name or agent_id, seed=seed, prompts=self.prompts)
        if not insights:
            return []
        vectors = self._embed_checked(await self.embedder.aembed([text for text, _ in insights]), len(insights))
        items = [
            (
                MemoryRecord(
                    id=memory_id(agent_id, conversation_id, now_step, "reflection", text),
                    agent_id=agent_id, text=text, kind="reflection", importance=self.reflection_importance,
                    step=now_step, conversation_id=conversation_id, metadata={"source_ids": cited, "seed": seed},
                ),
                vec,
                covers,
            )
            for (text, cited), vec in zip(insights, vectors)
        ]
        stored, new = await self._call(self._insert, items)
        log.info("agent %s reflected at step %d: %d insight(s), %d new", agent_id, now_step, len(items), new)
        return [stored[r.id] for r, _, _ in items]

    # ---- store-level helpers ---------------------------------------------------
    def count(self, agent_id: str | None = None) -> int:
        """How many memories are stored (of one agent, or in total)."""
        with self._lock:
            if not self._store.exists():
                return 0
            return self._store.count(agent_filter(agent_id))

    def delete_agent(self, agent_id: str) -> int:
        """Forget every memory of ``agent_id``; return how many were deleted."""
        with self._lock:
            if not self._store.exists():
                return 0
            flt = agent_filter(agent_id)
            n = self._store.count(flt)
            if n:
                self._store.delete(flt)
            self._states.pop(agent_id, None)
            return n

    def export_records(self, agent_id: str | None = None) -> list[MemoryRecord]:
        """Every memory of ``agent_id`` (or of all agents) in insertion order, for saving."""
        with self._lock:
            if not self._store.exists():
                return []
            points = list(self._store.scroll(agent_filter(agent_id)))
        points.sort(key=lambda p: ((p.payload or {}).get("agent_id", ""), (p.payload or {}).get(SEQ_KEY, 0)))
        return [_record(p.payload or {}) for p in points]

    def import_records(self, records: Iterable[MemoryRecord]) -> int:
        """Store exported records (ids kept, vectors re-embedded); return how many were new.

        Records already present are skipped, so importing twice is harmless.
        """
        records = list(records)
        added = 0
        for start in range(0, len(records), _EMBED_BATCH):
            chunk = records[start : start + _EMBED_BATCH]
            vectors = self._embed_checked(self.embedder.embed([r.text for r in chunk]), len(chunk))
            with self._lock:
                _, new = self._insert([(r, v, None) for r, v in zip(chunk, vectors)])
            added += new
        return added
