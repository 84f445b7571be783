"""Memory retrieval latency of AgentMemory at 1k, 10k and 100k memories.

The embedded engines, on disk in a temporary folder: Qdrant Edge (``edge``, the
default since issue 17: Qdrant's engine in process, payload indexes, exact scoring of the filtered points) and
qdrant-client local mode (``local``, the earlier default, which filters in Python),
in one run so the rows compare; a Qdrant server too when ``PERSONAE_QDRANT_URL`` is
set (a throw-away collection, deleted afterwards). Memories are spread over 20
agents (50, 500 and 5,000 per agent) with the hashing embedder (256 dimensions), so
the figures are the store's and personae's, not an embedding model's.
``retrieve(agent, query, k=5)`` is timed on both candidate paths:

* default — what a user gets: in an embedded store an agent with ≤ 1,000 memories
  has all of them scored exhaustively, above that one filtered vector search plus
  the agent's most recent memories;
* vector search — one filtered Qdrant query (+ recent memories) at every size.

How the stores are built: the 1k store through the public write path
(``observe_many`` in batches of 500), whose rate is reported; the 10k and 100k
stores through AgentMemory's own batched insert (the same payloads and ids as
``observe_many``, no duplicate check), in local mode after switching the
collection's SQLite file to WAL with ``synchronous=NORMAL`` (local mode commits
every point separately, ~500 points/s). The store is then closed and reopened, so
retrieval starts from disk like a new process; the first retrieval (which loads
the agent's summary) is reported apart. Above 20k memories only
``--queries-large`` queries per path are timed (each takes about a second in local mode).

    python bench/memory.py --sizes 1000 10000 100000 --backends edge local
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
import uuid
import warnings
from typing import Any

from _common import log, write_result

from personae.embeddings import HashingEmbedder
from personae.memory import AgentMemory, MemoryRecord, Observation, QdrantHandle, open_qdrant

WORDS = "rain coffee music train office garden city river bread lamp paper window family money plan dream router price help".split()
AGENTS = 20
QUERIES = ("family money plan", "the router keeps dropping", "coffee in the garden", "train to the city")


def _observations(size: int, seed: int = 0) -> list[Observation]:
    rng = random.Random(seed)
    return [
        Observation(
            agent_id=f"a{i % AGENTS}",
            text=" ".join(rng.choice(WORDS) for _ in range(10)) + f" #{i}",
            step=i // AGENTS,
            importance=round(rng.random(), 3),
            conversation_id=f"c{(i // AGENTS) // 30}",
        )
        for i in range(size)
    ]


def _fast_local_writes(handle: QdrantHandle, collection: str) -> None:
    """WAL + synchronous=NORMAL on the local collection's SQLite file (qdrant-client internals)."""
    storage = handle.client._client.collections[collection].storage.storage  # noqa: SLF001 - bench-only bulk load
    storage.execute("PRAGMA journal_mode=WAL")
    storage.execute("PRAGMA synchronous=NORMAL")


async def _build(handle: QdrantHandle, embedder: HashingEmbedder, collection: str, size: int) -> dict[str, Any]:
    memory = AgentMemory(handle, embedder, collection=collection)
    observations = _observations(size)
    started = time.perf_counter()
    if size <= 1000:
        for start in range(0, size, 500):
            await memory.observe_many(observations[start : start + 500])
        how = "observe_many"
    else:
        memory._store.ensure()  # noqa: SLF001 - bench-only bulk load through AgentMemory's own insert
        if handle.backend == "local":
            _fast_local_writes(handle, collection)
        for start in range(0, size, 5000):
            chunk = observations[start : start + 5000]
            vectors = embedder.embed([o.text for o in chunk])
            items = [
                (MemoryRecord(id=o.record_id, agent_id=o.agent_id, text=o.text, kind=o.kind, importance=o.importance,
                              step=o.step, conversation_id=o.conversation_id), vec, None)
                for o, vec in zip(chunk, vectors)
            ]
            memory._locked(memory._insert, items)  # noqa: SLF001
        how = "batched insert" + (" (SQLite WAL, synchronous=NORMAL)" if handle.backend == "local" else "")
    write_s = time.perf_counter() - started
    return {"write": how, "write_s": write_s, "writes_per_s": size / write_s}


async def _time(memory: AgentMemory, queries: int) -> dict[str, float]:
    started = time.perf_counter()
    await memory.retrieve("a0", QUERIES[0], k=5)
    first = time.perf_counter() - started
    lat = []
    for q in range(queries):
        started = time.perf_counter()
        out = await memory.retrieve(f"a{q % AGENTS}", QUERIES[q % len(QUERIES)], k=5)
        lat.append(time.perf_counter() - started)
        if len(out) != 5:
            raise RuntimeError(f"retrieval returned {len(out)} memories, expected 5")
    lat.sort()
    return {"first_ms": first * 1e3, "median_ms": statistics.median(lat) * 1e3, "p90_ms": lat[int(0.9 * (len(lat) - 1))] * 1e3, "queries": queries}


async def run_size(size: int, *, queries: int, url: str | None, backend: str = "edge") -> dict[str, Any]:
    """Build a store of ``size`` memories, reopen it, time retrievals on both paths."""
    embedder = HashingEmbedder(dim=256)
    collection = f"bench_{uuid.uuid4().hex[:8]}" if url else "personae_memory"
    with tempfile.TemporaryDirectory() as tmp:
        target: dict[str, Any] = {"url": url} if url else {"path": tmp, "backend": backend}
        with open_qdrant(**target) as handle:
            built = await _build(handle, embedder, collection, size)
        started = time.perf_counter()
        handle = open_qdrant(**target)
        reopen_s = time.perf_counter() - started
        try:
            memory = AgentMemory(handle, embedder, collection=collection)
            default = await _time(memory, queries)
            memory.exhaustive_limit = 0  # the same instance (summary loaded once): always search
            searched = await _time(memory, queries)
            count = memory.count()
        finally:
            if url:
                handle.client.delete_collection(collection)
            handle.close()
    if count != size:
        raise RuntimeError(f"store holds {count} memories, expected {size}")
    return {
        "backend": "server" if url else backend,
        "memories": size,
        "agents": AGENTS,
        "per_agent": size // AGENTS,
        **built,
        "reopen_s": reopen_s,
        "default": default,
        "vector_search": searched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--queries-large", type=int, default=10, help="queries per path above 20k memories (each takes about a second in local mode)")
    parser.add_argument("--backends", nargs="+", choices=["edge", "local"], default=["edge", "local"], help="embedded engines to measure")
    args = parser.parse_args()
    url = os.environ.get("PERSONAE_QDRANT_URL") or None
    warnings.filterwarnings("ignore", message="Local mode is not recommended")  # measured here on purpose
    rows = []
    targets = [(None, b) for b in args.backends] + ([(url, "server")] if url else [])
    for backend_url, backend in targets:
        for size in args.sizes:
            queries = args.queries if size <= 20_000 or backend == "edge" else args.queries_large
            row = asyncio.run(run_size(size, queries=queries, url=backend_url, backend=backend))
            log(
                f"memory: {row['backend']:<6} {size:>7,} memories  default median {row['default']['median_ms']:.1f} ms  "
                f"vector search median {row['vector_search']['median_ms']:.1f} ms  reopen {row['reopen_s']:.2f} s + first {row['default']['first_ms']:.0f} ms  "
                f"(write {row['writes_per_s']:,.0f}/s via {row['write']})"
            )
            rows.append(row)
    print(write_result("memory", {"method": __doc__, "server_url_given": bool(url), "backends": args.backends, "rows": rows}))


if __name__ == "__main__":
    main()
