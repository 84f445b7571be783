"""Benchmark: the simulate flow at scale, on threads and on Dask, against the OpenAI-compatible test server.

N conversations × T turns (dyad, persona critic on) through the real Prefect pipeline flow,
the real HTTP client and the gateway, against ``OpenAITestServer`` in its own process
answering every request after L = 200 ms. Each runner (``--runners``) gets the same workload
in a fresh data dir (nothing is served from the cache):

* ``threads``  — the shards on threads of the flow's process, one in-process limit;
* ``dask``     — the shards on a local Dask cluster of ``--workers`` processes, each process
  with its own limits (``llm_global_limits: false``);
* ``dask+gcl`` — the same, with one limit shared through Prefect's global concurrency limits
  (what a Dask run does by default): each shard leases its share of the limit's slots on the
  Prefect server when it starts and keeps its calls within it in process.

Figures per run:

* achieved overlap = Σ served latency / wall time (mean calls in flight);
* ideal wall       = max(Σ latency / min(concurrency, N), one conversation's calls × L);
* efficiency       = ideal wall / wall (1.0 = the latency is fully overlapped);
* the server's peak of requests in flight, and the processes the shards ran in.

Not a test: ``python bench/flows_scale.py --runners threads dask dask+gcl [--conversations 1000]
[--out flows_scale]``; bench/run_all runs a smaller workload (see its BENCHMARKS).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml
from _common import log, write_result


def _personas(n: int) -> list[dict]:
    jobs = ["nurse", "plumber", "teacher", "analyst", "chef", "driver", "pharmacist", "designer"]
    cities = ["Madrid", "Leeds", "Toronto", "Lyon", "Osaka", "Lagos", "Lima", "Pune"]
    return [
        {"name": f"Person {i}", "age": 20 + i % 60, "occupation": jobs[i % len(jobs)], "location": cities[i % len(cities)],
         "description": f"A {jobs[i % len(jobs)]} from {cities[i % len(cities)]}."}
        for i in range(n)
    ]


def _experiment(folder: Path, base_url: str, args: argparse.Namespace, dask: int) -> Path:
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
                       "dask": bool(dask), "dask_workers": dask or None},
    }
    path = folder / "flows_scale.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


RUNNERS = {
    "threads": "thread shards in one process (in-process limits)",
    "dask": "Dask, a local cluster of worker processes, each with its own limits (llm_global_limits: false)",
    "dask+gcl": "Dask, the same cluster, one limit shared through Prefect's global concurrency limits (the Dask default)",
}


def _serve(latency_s: float, ready, stop, out) -> None:
    """The test server in its own process (it must not share the client's GIL): send its URL,
    serve until told to stop, then send its counters."""
    from personae.testing.server import OpenAITestServer, TestServerConfig

    with OpenAITestServer(TestServerConfig(latency_s=latency_s)) as server:
        ready.put(server.base_url)
        stop.wait()
        out.put({"peak_in_flight": server.peak_in_flight})


@contextmanager
def _server_process(latency_s: float) -> Iterator[tuple[str, dict]]:
    """Yield the server's URL and a dict filled with its counters when the block ends."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, out, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(latency_s, ready, stop, out), daemon=True)
    proc.start()
    counters: dict = {}
    try:
        yield ready.get(timeout=120), counters
    finally:
        stop.set()
        counters.update(out.get(timeout=60))
        proc.join(30)


def run_once(args: argparse.Namespace, runner: str) -> dict:
    """One pipeline run (generate + simulate) with ``runner``, in a fresh data dir; its figures."""
    from personae.flows.pipeline import pipeline_flow

    dask = args.workers if runner.startswith("dask") else 0
    with tempfile.TemporaryDirectory() as tmp, _server_process(args.latency) as (base_url, server):
        folder = Path(tmp)
        # the gateway's limit per process must not be the bottleneck
        os.environ["PERSONAE_LLM_MAX_CONCURRENCY"] = str(max(64, args.concurrency))
        os.environ["PERSONAE_LLM_GLOBAL_LIMITS"] = "true" if runner == "dask+gcl" else "false"
        exp = _experiment(folder, base_url, args, dask)
        api = nullcontext()
        if dask:  # Dask workers report to a real Prefect server
            from personae.flows.prefect_server import prefect_api
            from personae.settings import Settings

            api = prefect_api(Settings(data_dir=folder / "data"), ui=False)
        cpu, load = time.process_time(), os.getloadavg()[0]
        with api:
            started = time.perf_counter()
            result = pipeline_flow(experiment=str(exp), stages=["generate", "simulate"], track=False, data_dir=str(folder / "data"))
            total_wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
    m = result.metrics
    wall = m["simulate.wall_s"]
    calls = m["simulate.usage.model_calls"]
    served_latency = calls * args.latency
    conversations = int(m["simulate.conversations.complete"])
    cap = min(args.concurrency, args.conversations)
    per_conversation = calls / max(conversations, 1)
    ideal_wall = max(served_latency / cap, per_conversation * args.latency)
    batch_wall = m["simulate.shard_wall_s_sum"] / args.shards  # the shards run at once: their mean batch time
    return {
        "runner": runner,
        "runner_means": RUNNERS[runner],
        "worker_processes": dask or 1,
        "shard_processes": int(m.get("simulate.shards.processes", 0)),
        "shards_on_dask_workers": int(m.get("simulate.shards.on_dask_workers", 0)),
        "conversations": conversations,
        "failed": int(m["simulate.conversations.failed"]),
        "turns_per_conversation": m["simulate.utterances.per_conversation"],
        "model_calls": int(calls),
        "calls_per_conversation": round(per_conversation, 2),
        "concurrency_cap": cap,
        "server_peak_in_flight": server["peak_in_flight"],
        # the most calls in flight a process's limiter allowed: the endpoint's limit, or a shard's lease of it
        "process_limit": max((int(v) for k, v in m.items() if k.startswith("simulate.limits.") and k.endswith(".window_max")), default=0),
        "endpoint_limit": int(os.environ["PERSONAE_LLM_MAX_CONCURRENCY"]),
        "simulate_wall_s": round(wall, 2),
        "pipeline_wall_s": round(total_wall, 1),
        "achieved_overlap": round(served_latency / wall, 2),
        "ideal_wall_s": round(ideal_wall, 2),
        "efficiency": round(ideal_wall / wall, 3),
        "conversations_per_s": round(conversations / wall, 3),
        "calls_per_s": round(calls / wall, 2),
        "shard_batch_wall_s_mean": round(batch_wall, 2),
        "calls_per_s_in_batches": round(calls / batch_wall, 2),
        "flow_process_cpu_s": round(cpu, 1),
        "loadavg_1min_before": round(load, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1000, help="conversations in flight, over all shards")
    parser.add_argument("--personas", type=int, default=200)
    parser.add_argument("--no-critic", dest="critic", action="store_false")
    parser.add_argument("--runners", nargs="+", choices=sorted(RUNNERS), default=["threads"], help="one run each, in this order")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the local Dask cluster")
    parser.add_argument("--out", default=None, help="write bench/results/OUT.json (else only print)")
    args = parser.parse_args()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    rows = []
    for runner in args.runners:
        log(f"flows_scale: {runner} …")
        rows.append(run_once(args, runner))
        log(f"flows_scale: {runner}: {rows[-1]['conversations_per_s']} conversations/s, {rows[-1]['simulate_wall_s']} s")
    report = {
        "workload": {"conversations": args.conversations, "turns": args.turns, "latency_s": args.latency, "shards": args.shards,
                     "concurrency": args.concurrency, "critic": args.critic, "dask_workers": args.workers},
        "embedder": "hashing",
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_result(args.out, report)


if __name__ == "__main__":
    main()
