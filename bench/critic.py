#!/usr/bin/env python3
"""Critic on vs off, same model and seeds: the defects it targets, measured by the validated metrics.

    python bench/critic.py                         # EchoingLLM (a fake that copies its partner 50 % of the time)
    python bench/critic.py --model local -n 6      # the embedded SmolLM2 (slow: minutes per arm)

Writes bench/results/critic.json: per arm, echo_rate, repetition_rate, role_confusion
(validated metrics, docs/metrics.md), stop reasons, and model calls per utterance.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, machine, make_personas, write_result  # noqa: E402

from personae.embeddings import HashingEmbedder  # noqa: E402
from personae.evaluation import transcript_metrics  # noqa: E402
from personae.graphs import GraphConfig, latest_conversations, make_jobs, simulate_batch  # noqa: E402
from personae.llm import Gateway  # noqa: E402
from personae.llm.testing import EchoingLLM  # noqa: E402
from personae.models import Role, Scenario  # noqa: E402
from personae.nodes.critic import CriticConfig  # noqa: E402

SCENARIO = Scenario(name="Router support", setting="A customer calls because the home router drops the connection every evening.",
                    max_turns=10, min_turns=2, roles=[Role(name="customer", goal="get the connection stable"),
                                                      Role(name="agent", goal="diagnose and fix the problem politely")])


def _model(name: str):
    if name == "echo":
        return EchoingLLM(rate=0.5, seed=1)
    from personae.llm.local import LocalLlamaLLM

    return LocalLlamaLLM()


async def _arm(model: str, critic: bool, n: int) -> dict:
    config = GraphConfig(critic=CriticConfig(enabled=critic, llm=model != "echo"), termination={"detector": False})
    jobs = make_jobs(make_personas(max(4, n)), [SCENARIO], config, n_conversations=n, seed=5)
    out = Path(tempfile.mkdtemp()) / "conversations.jsonl"
    gateway = Gateway(_model(model))
    started = time.perf_counter()
    await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None, concurrency=4)
    wall = time.perf_counter() - started
    conversations = latest_conversations(out)
    report = transcript_metrics(conversations, embedder=HashingEmbedder())
    utterances = sum(len(c.utterances) for c in conversations)
    calls = gateway.usage.total().model_calls
    verdicts = Counter(u.metadata.get("critic", {}).get("verdict", "none") for c in conversations for u in c.utterances)
    await gateway.aclose()
    return {
        "echo_rate": report.aggregate.get("echo_rate"),
        "repetition_rate": report.aggregate.get("repetition_rate"),
        "role_confusion": report.aggregate.get("role_confusion"),
        "stop_reasons": dict(Counter(c.stop_reason.value for c in conversations)),
        "conversations": len(conversations),
        "utterances": utterances,
        "calls_per_utterance": calls / utterances if utterances else None,
        "critic_verdicts": dict(verdicts),
        "wall_s": wall,
    }


async def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["echo", "local"], default="echo")
    parser.add_argument("-n", "--conversations", type=int, default=40)
    args = parser.parse_args()
    arms = {}
    for critic in (False, True):
        name = "critic_on" if critic else "critic_off"
        arms[name] = await _arm(args.model, critic, args.conversations)
        log(f"critic bench ({args.model}) {name}: {arms[name]}")
    write_result(f"critic_{args.model}", {"machine": machine(), "model": args.model, "arms": arms})
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main()))
