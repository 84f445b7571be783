"""Model calls per utterance and prompt tokens per persona turn, by graph, projection and context.

Dyad and 5-party group (moderator picks the speaker) conversations of 30 turns with
the default graph settings — critic on, LLM end-detector every 4 turns — against an
in-process fake model that answers ~40 words per turn, accepts every draft (so the
critic costs one call per turn, the minimum) and never ends the conversation early.
Every request the fake receives is counted per gateway role; prompt tokens per
persona turn are the persona call's prompt tokens (≈ 4 characters per token,
:func:`personae.llm.base.estimate_tokens`) read from each utterance's metadata, at
turns 2, 10 and 30, averaged over the conversations.

Contexts: ``full history`` (no window, no memory), ``window 12`` (the last 12
utterances verbatim), ``window 12 + memory`` (the same plus k = 4 memories
retrieved per turn from Qdrant local mode, observations of every turn and
reflections; hashing embedder) and ``window 8 + memory`` (a window that is full
before turn 10). Projections: ECP (egocentric chat messages) and
concat (the history as labelled lines in one user message).

    python bench/tokens.py
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
from personae.memory import AgentMemory, open_qdrant
from personae.nodes.termination import TerminationConfig

TURNS_AT = (2, 10, 30)
CONTEXTS = {
    "full history": {"window": None, "memory": False},
    "window 12": {"window": 12, "memory": False},
    "window 12 + memory": {"window": 12, "memory": True},
    "window 8 + memory": {"window": 8, "memory": True},
}


async def _measure(kind: str, projection: str, context: str, *, conversations: int, turns: int, tmp: Path) -> dict[str, Any]:
    ctx = CONTEXTS[context]
    size = 5 if kind == "group" else 2
    config = graph_config(
        kind, max_turns=turns, critic=True, projection=projection, window=ctx["window"], memory=ctx["memory"], group_size=size,
        termination=TerminationConfig(max_turns=turns, closing=False),  # detector and repetition rules on, as by default
    )
    jobs = make_jobs(make_personas(max(conversations * size, size + 1)), [make_scenario(turns, roles=size)], config, n_conversations=conversations, seed=3)
    fake = AgreeableFakeLLM(words=40)
    gateway = Gateway(fake, cache=None, max_concurrency=64)
    embedder = HashingEmbedder(dim=256)
    out = tmp / "out.jsonl"
    if ctx["memory"]:
        with open_qdrant(path=tmp / "qdrant") as handle:
            memory = AgentMemory(handle, embedder)
            await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None, embedder=embedder, memory=memory, concurrency=conversations)
    else:
        await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=None, embedder=embedder, concurrency=conversations)
    convs = latest_conversations(out)
    if any(c.status.value != "complete" or len(c.utterances) != turns for c in convs):
        raise RuntimeError(f"{kind}/{projection}/{context}: conversations did not run {turns} turns: {[len(c.utterances) for c in convs]}")
    utterances = sum(len(c.utterances) for c in convs)
    snap = gateway.usage.snapshot()
    roles = sorted({k.split(".")[0] for k in snap if k != "total.calls" and not k.startswith("total.")})
    row: dict[str, Any] = {
        "graph": kind,
        "participants": size,
        "projection": projection,
        "context": context,
        "conversations": len(convs),
        "utterances": utterances,
        "model_calls": snap["total.calls"],
        "calls_per_utterance": snap["total.calls"] / utterances,
        "calls_per_utterance_by_role": {r: snap[f"{r}.calls"] / utterances for r in roles},
        "prompt_tokens_per_utterance_all_calls": snap["total.prompt_tokens"] / utterances,
    }
    for t in TURNS_AT:
        row[f"persona_prompt_tokens_turn_{t}"] = statistics.mean(c.utterances[t - 1].metadata["usage"]["prompt_tokens"] for c in convs)
    by_turn = [statistics.mean(c.utterances[i].metadata["usage"]["prompt_tokens"] for c in convs) for i in range(turns)]
    row["persona_prompt_tokens_by_turn"] = by_turn
    row["growth_10_to_30"] = row["persona_prompt_tokens_turn_30"] / row["persona_prompt_tokens_turn_10"]
    if ctx["window"] is not None and ctx["window"] + 1 < turns:
        # once the window is full (turn window+1), only memories and the texts themselves vary
        row["growth_after_window_full"] = by_turn[-1] / by_turn[ctx["window"]]
    if ctx["memory"]:
        row["memories_in_prompt_turn_30"] = statistics.mean(c.utterances[-1].metadata.get("memories", 0) for c in convs)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("dyad", "group"):
            for projection in ("ecp", "concat"):
                for context in CONTEXTS:
                    d = Path(tmp) / f"{kind}-{projection}-{context.replace(' ', '_').replace('+', 'p')}"
                    d.mkdir()
                    row = asyncio.run(_measure(kind, projection, context, conversations=args.conversations, turns=args.turns, tmp=d))
                    log(
                        f"tokens: {kind:<5} {projection:<6} {context:<19} calls/utt {row['calls_per_utterance']:.2f}  "
                        f"prompt tokens @2/10/30: {row['persona_prompt_tokens_turn_2']:.0f}/{row['persona_prompt_tokens_turn_10']:.0f}/{row['persona_prompt_tokens_turn_30']:.0f}"
                    )
                    rows.append(row)
    print(write_result("tokens", {"method": __doc__, "rows": rows}))


if __name__ == "__main__":
    main()
