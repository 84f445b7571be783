"""Retrieval latency of AgentMemory in Qdrant local mode (a benchmark, not a test).

Writes N memories spread over A agents into a temporary local store with the
hashing embedder, then times ``retrieve`` on both candidate paths: exhaustive
(local default: all of an agent's memories fetched by id and scored) and
vector search (one filtered Qdrant query, as against a server).

    python bench/memory_retrieval.py --sizes 1000 10000 --agents 20
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time

from personae.embeddings import HashingEmbedder
from personae.memory import AgentMemory, Observation, open_qdrant

WORDS = "rain coffee music train office garden city river bread lamp paper window family money plan dream".split()


async def _time_retrievals(memory: AgentMemory, agents: int, queries: int) -> list[float]:
    out = []
    for q in range(queries):
        started = time.perf_counter()
        await memory.retrieve(f"a{q % agents}", "family money plan", k=5)
        out.append(time.perf_counter() - started)
    return out


async def run(size: int, agents: int, queries: int) -> None:
    rng = random.Random(0)
    embedder = HashingEmbedder(dim=256)
    with tempfile.TemporaryDirectory() as tmp, open_qdrant(path=tmp) as handle:
        memory = AgentMemory(handle, embedder)
        observations = [
            Observation(agent_id=f"a{i % agents}", text=" ".join(rng.choice(WORDS) for _ in range(8)) + f" #{i}", step=i // agents, importance=rng.random())
            for i in range(size)
        ]
        started = time.perf_counter()
        for start in range(0, size, 500):
            await memory.observe_many(observations[start : start + 500])
        write_s = time.perf_counter() - started
        searched = AgentMemory(handle, embedder, exhaustive_limit=0)
        for name, mem in (("exhaustive", memory), ("vector search", searched)):
            lat = sorted(await _time_retrievals(mem, agents, queries))
            print(
                f"{size:>7,} memories / {agents} agents  {name:<13}  median {statistics.median(lat) * 1e3:7.1f} ms"
                f"  p90 {lat[int(0.9 * (len(lat) - 1))] * 1e3:7.1f} ms   (write {size / write_s:,.0f} memories/s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    for size in args.sizes:
        asyncio.run(run(size, args.agents, args.queries))


if __name__ == "__main__":
    main()
