"""Benchmark: the simulate flow at scale against the OpenAI-compatible test server.

1,000 conversations × 10 turns (dyad, persona critic on) through the real Prefect
flow, the real HTTP client and the gateway, against ``OpenAITestServer`` answering
every request after 200 ms. Reports wall time and overlap efficiency:

* achieved overlap = Σ model-call latency / wall time (mean calls in flight);
* ideal overlap    = min(concurrency cap, conversations), since a conversation
  has one call in flight at a time;
* efficiency       = achieved / ideal (1.0 = the latency is fully overlapped);
* ideal wall       = max(Σ latency / ideal overlap, longest conversation's calls × latency).

Not a test: run ``python bench/flows_scale.py [--conversations 1000] [--shards 4]``.
Each run uses a fresh data dir, so nothing is served from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import yaml


def _personas(n: int) -> list[dict]:
    jobs = ["nurse", "plumber", "teacher", "analyst", "chef", "driver", "pharmacist", "designer"]
    cities = ["Madrid", "Leeds", "Toronto", "Lyon", "Osaka", "Lagos", "Lima", "Pune"]
    return [
        {"name": f"Person {i}", "age": 20 + i % 60, "occupation": jobs[i % len(jobs)], "location": cities[i % len(cities)],
         "description": f"A {jobs[i % len(jobs)]} from {cities[i % len(cities)]}."}
        for i in range(n)
    ]


def _experiment(folder: Path, base_url: str, args: argparse.Namespace) -> Path:
    (folder / "personas.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _personas(args.personas)))
    data = {
        "name": "flows-scale",
        "seed": 1,
        "models": {"default": {"provider": "openai", "model": "bench-chat", "base_url": base_url}},
        "embeddings": {"provider": "hashing"},
        "personas_file": "personas.jsonl",
        "scenarios": [{
            "name": "support", "setting": "A support chat.",
            "roles": [{"name": "client", "goal": "get help"}, {"name": "responder", "goal": "help"}],
            "max_turns": args.turns, "min_turns": args.turns,
        }],
        "graph": {
            "kind": "dyad",
            "critic": {"enabled": args.critic, "llm": args.critic, "max_attempts": 2},
            "termination": {"closing": False, "repetition": False, "empty": False, "detector": False},
        },
        "simulation": {"n_conversations": args.conversations, "shards": args.shards,
                       "concurrency": max(1, args.concurrency // args.shards),
                       "dask": bool(args.dask), "dask_workers": args.dask or None},
    }
    path = folder / "flows_scale.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1000, help="conversations in flight, over all shards")
    parser.add_argument("--personas", type=int, default=200)
    parser.add_argument("--no-critic", dest="critic", action="store_false")
    parser.add_argument("--dask", type=int, default=0, metavar="WORKERS", help="run the shards on a local Dask cluster of WORKERS processes")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from personae.flows.pipeline import pipeline_flow
    from personae.testing.server import OpenAITestServer, TestServerConfig

    with tempfile.TemporaryDirectory() as tmp, OpenAITestServer(TestServerConfig(latency_s=args.latency)) as server:
        folder = Path(tmp)
        # the gateway's limit per shard must not be the bottleneck
        os.environ["PERSONAE_LLM_MAX_CONCURRENCY"] = str(max(64, args.concurrency // args.shards))
        exp = _experiment(folder, server.base_url, args)
        api = nullcontext()
        if args.dask:  # Dask workers report to a real Prefect server
            from personae.flows.prefect_server import prefect_api
            from personae.settings import Settings

            api = prefect_api(Settings(data_dir=folder / "data"), ui=False)
        with api:
            started = time.perf_counter()
            result = pipeline_flow(experiment=str(exp), stages=["generate", "simulate"], track=False, data_dir=str(folder / "data"))
            total_wall = time.perf_counter() - started
        m = result.metrics
        wall = m["simulate.wall_s"]
        calls = m["simulate.usage.model_calls"]
        latency_sum = m["simulate.usage.latency_mean_s"] * calls
        served_latency = calls * args.latency
        conversations = int(m["simulate.conversations.complete"])
        cap = min(args.concurrency, args.conversations)
        per_conversation = calls / max(conversations, 1)
        ideal_wall = max(served_latency / cap, per_conversation * args.latency)
        report = {
            "conversations": conversations,
            "failed": int(m["simulate.conversations.failed"]),
            "turns_per_conversation": m["simulate.utterances.per_conversation"],
            "model_calls": int(calls),
            "calls_per_conversation": round(per_conversation, 2),
            "tokens": int(m["simulate.usage.tokens"]),
            "shards": args.shards,
            "runner": f"dask ({args.dask} worker processes)" if args.dask else "threads (one process)",
            "concurrency_cap": cap,
            "server_peak_in_flight": server.peak_in_flight,
            "simulate_wall_s": round(wall, 1),
            "pipeline_wall_s": round(total_wall, 1),
            "achieved_overlap (server latency)": round(served_latency / wall, 1),
            "achieved_overlap (client latency)": round(latency_sum / wall, 1),
            "ideal_overlap": cap,
            "efficiency (achieved/ideal overlap)": round(served_latency / wall / cap, 3),
            "ideal_wall_s": round(ideal_wall, 1),
            "efficiency (ideal/achieved wall)": round(ideal_wall / wall, 3),
            "conversations_per_s": round(conversations / wall, 2),
            "cpu_s (this process)": round(time.process_time(), 1),
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
