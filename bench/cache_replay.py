"""Cache replay: speed-up of an identical rerun served from the response cache.

N dyads × T turns (default graph: critic on, LLM end-detector on) against the
local test server in its own process, answering after L seconds, with the
persistent SQLite response cache on. The identical batch is then run again into a
fresh output file with the same cache: every request (same model, messages,
parameters and derived seed) is a cache hit, so no request reaches the server and
the rerun costs only personae's own work.

    speed-up = first-run wall time / rerun wall time

The run also checks that the rerun made zero model calls and produced the same
transcripts.

    python bench/cache_replay.py
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import graph_config, log, make_personas, make_scenario, test_server_process, write_result

from personae.graphs import latest_conversations, make_jobs, simulate_batch
from personae.llm import Gateway, ResponseCache
from personae.llm.openai_provider import OpenAICompatibleLLM
from personae.nodes.termination import TerminationConfig


async def _run(base_url: str, jobs: list, cache_path: Path, out: Path, concurrency: int) -> dict[str, Any]:
    llm = OpenAICompatibleLLM("test", base_url=base_url, api_key="bench", max_connections=concurrency)
    gateway = Gateway(llm, cache=ResponseCache(cache_path), max_concurrency=concurrency)
    cpu0 = time.process_time()
    result = await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None, concurrency=len(jobs))
    cpu = time.process_time() - cpu0
    usage = gateway.usage.total()
    await gateway.aclose()
    return {"wall_s": result.wall_s, "cpu_s": cpu, "calls": usage.calls, "model_calls": usage.model_calls, "cached_calls": usage.cached_calls, "completed": result.completed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    n, turns = args.conversations, args.turns
    config = graph_config("dyad", max_turns=turns, critic=True, termination=TerminationConfig(max_turns=turns))
    jobs = make_jobs(make_personas(min(n, 200)), [make_scenario(turns)], config, n_conversations=n, seed=5)
    log(f"cache replay: {n} dyads × ≤{turns} turns, critic + detector on, L={args.latency}s, C={args.concurrency}")
    with test_server_process(args.latency) as (base_url, _), tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache.sqlite"
        first = asyncio.run(_run(base_url, jobs, cache, Path(tmp) / "first.jsonl", args.concurrency))
        log(f"  first run {first['wall_s']:.1f}s, {first['model_calls']} model calls")
        again = asyncio.run(_run(base_url, jobs, cache, Path(tmp) / "again.jsonl", args.concurrency))
        log(f"  rerun     {again['wall_s']:.1f}s, {again['model_calls']} model calls, {again['cached_calls']} cached")
        a = {c.id: [u.text for u in c.utterances] for c in latest_conversations(Path(tmp) / "first.jsonl")}
        b = {c.id: [u.text for u in c.utterances] for c in latest_conversations(Path(tmp) / "again.jsonl")}
    if again["model_calls"] != 0 or a != b:
        raise RuntimeError(f"the rerun was not a pure replay: {again['model_calls']} model calls, identical transcripts: {a == b}")
    payload = {
        "method": __doc__,
        "conversations": n,
        "turns": turns,
        "latency_s": args.latency,
        "concurrency": args.concurrency,
        "first": first,
        "rerun": again,
        "speedup": first["wall_s"] / again["wall_s"],
        "identical_transcripts": a == b,
        "utterances": sum(len(t) for t in a.values()),
    }
    log(f"  speed-up {payload['speedup']:.1f}×")
    print(write_result("cache_replay", payload))


if __name__ == "__main__":
    main()
