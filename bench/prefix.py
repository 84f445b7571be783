#!/usr/bin/env python3
"""Prompt prefix reuse: how much of each persona call's prompt repeats the same speaker's previous call.

A provider's prompt cache (OpenAI, vLLM, llama.cpp) serves the longest prefix a request
shares with an earlier one. For every persona call of a 30-turn (and a 60-turn) dyad,
this measures the longest common prefix of the prompt as sent (the message list
serialised as role + content, the way a chat template lays it out) with the same
speaker's previous call, as a share of the call's prompt, from the third turn of the
conversation on. Arms: the window of 12 utterances sliding by one per turn, and
moving in blocks of 12 (the default), without and with memory retrieval (k = 4,
Qdrant local mode, hashing embedder). Against the in-process fake answering ~40 words
per turn whose critic accepts every draft; each conversation runs on its own so the
requests it sent are read in order. Also reported: mean prompt tokens per persona call
(≈ 4 characters per token), the flat token count the sliding window gives against the
block window's sawtooth.

    python bench/prefix.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from _common import AgreeableFakeLLM, graph_config, log, make_personas, make_scenario, write_result

from personae.embeddings import HashingEmbedder
from personae.graphs import latest_conversations, make_jobs, simulate_batch
from personae.llm import Gateway
from personae.llm.base import LLMRequest, ResponseFormat, estimate_tokens
from personae.memory import AgentMemory, open_qdrant
from personae.nodes.termination import TerminationConfig

WINDOW = 12


class RecordingFake(AgreeableFakeLLM):
    """The agreeable fake, keeping the persona (plain text) requests in the order they came."""

    def __init__(self) -> None:
        super().__init__(words=40)
        self.persona_requests: list[LLMRequest] = []

    async def complete(self, request: LLMRequest):  # noqa: D102
        if request.response_format is ResponseFormat.TEXT:
            self.persona_requests.append(request)
        return await super().complete(request)


def serialise(request: LLMRequest) -> str:
    """The prompt as a chat template lays it out: each message's role, then its content."""
    return "".join(f"<|{m.role}|>\n{m.content}\n" for m in request.messages)


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:  # binary search on prefix equality (fast on long strings)
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


async def _arm(mode: str, memory: bool, *, conversations: int, turns: int, tmp: Path) -> dict[str, Any]:
    config = graph_config("dyad", max_turns=turns, critic=True, window=WINDOW, memory=memory,
                          termination=TerminationConfig(max_turns=turns, closing=False))
    config = config.model_copy(update={"window_mode": mode})
    jobs = make_jobs(make_personas(max(conversations * 2, 3)), [make_scenario(turns)], config, n_conversations=conversations, seed=3)
    embedder = HashingEmbedder(dim=256)
    shares: list[float] = []
    reused = total = 0
    tokens: list[int] = []
    steady: list[int] = []
    cache_hits = 0
    with open_qdrant(path=tmp / "qdrant") if memory else _null() as handle:
        store = AgentMemory(handle, embedder) if memory else None
        for job in jobs:
            fake = RecordingFake()
            gateway = Gateway(fake, cache=None)
            out = tmp / f"{job.id}.jsonl"
            await simulate_batch([job], gateway=gateway, out_path=out, checkpoint_path=None, embedder=embedder, memory=store, concurrency=1)
            conv = latest_conversations(out)[0]
            persona_calls = [r for r in fake.persona_requests if r.messages and r.messages[0].role == "system" and r.messages[0].content.startswith("You are ")]
            if len(persona_calls) != len(conv.utterances):
                raise RuntimeError(f"{mode}: {len(persona_calls)} persona calls for {len(conv.utterances)} utterances")
            previous: dict[str, str] = {}
            for turn, request in enumerate(persona_calls):
                speaker = request.messages[0].content
                prompt = serialise(request)
                n_tokens = sum(estimate_tokens(m.content) for m in request.messages)
                if turn >= 2 and speaker in previous:
                    shared = common_prefix(prompt, previous[speaker])
                    shares.append(shared / len(prompt))
                    reused += shared
                    total += len(prompt)
                    cache_hits += shared >= 0.8 * len(prompt)
                    tokens.append(n_tokens)
                    if turn >= WINDOW:
                        steady.append(n_tokens)
                previous[speaker] = prompt
            await gateway.aclose()
    return {
        "window_mode": mode,
        "memory": memory,
        "turns": turns,
        "conversations": conversations,
        "calls_measured": len(shares),
        "prefix_share_mean": statistics.mean(shares),
        "prefix_share_token_weighted": reused / total,
        "calls_at_least_0_8": cache_hits / len(shares),
        "prompt_tokens_per_call": statistics.mean(tokens),
        "prompt_tokens_per_call_once_window_full": statistics.mean(steady) if steady else None,
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for turns in (30, 60):
            for memory in (False, True):
                for mode in ("sliding", "block"):
                    d = Path(tmp) / f"{turns}-{mode}-{memory}"
                    d.mkdir()
                    row = asyncio.run(_arm(mode, memory, conversations=args.conversations, turns=turns, tmp=d))
                    log(f"prefix: {turns} turns {mode:<7} memory={memory!s:<5} share {row['prefix_share_mean']:.2f} "
                        f"(token-weighted {row['prefix_share_token_weighted']:.2f}), tokens/call {row['prompt_tokens_per_call']:.0f}")
                    rows.append(row)
    print(write_result("prefix", {"method": __doc__, "window": WINDOW, "rows": rows}))


if __name__ == "__main__":
    main()
