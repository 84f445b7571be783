"""Framework overhead: CPU seconds per turn of personae's own work, and memory per conversation.

The model is an in-process fake with zero latency (``AgreeableFakeLLM``: the critic
accepts the first draft, so every turn costs exactly one persona call, plus one
critic call when the critic is on), so the CPU measured with ``time.process_time``
(all threads of this process) is personae's and LangGraph's own work: projection,
prompt rendering, gateway wrappers, graph steps, JSON Lines output and, when on,
the SQLite checkpointer (``AsyncSqliteSaver``) and the critic node. Bytes written
per conversation (``wchar`` of /proc/self/io: the JSON Lines output plus, when on,
the checkpointer's WAL and database writes) show what checkpointing costs on disk. Dyad, T turns,
termination by max turns only, N conversations all admitted at once.

Peak RSS per 1,000 concurrent conversations: 1,000 conversations whose fake model
answers after 1 s, so all of them are alive at the same time; the peak resident
set (VmHWM) above the baseline of a warmed-up process, measured in a fresh child
process (without the checkpointer by default: 1,000 concurrent checkpointed
conversations take minutes to write; ``--rss-checkpoint`` adds them).

    python bench/overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import AgreeableFakeLLM, graph_config, log, make_personas, make_scenario, peak_rss_mb, reset_peak_rss, rss_mb, write_result

from personae.graphs import make_jobs, simulate_batch
from personae.llm import Gateway

CONFIGS = (
    {"name": "plain", "checkpoint": False, "critic": False},
    {"name": "checkpoint", "checkpoint": True, "critic": False},
    {"name": "critic", "checkpoint": False, "critic": True},
    {"name": "checkpoint + critic", "checkpoint": True, "critic": True},
)


async def _batch(n: int, turns: int, *, checkpoint: bool, critic: bool, latency_s: float, tmp: Path) -> dict[str, Any]:
    jobs = make_jobs(make_personas(max(2, min(n, 200))), [make_scenario(turns)], graph_config("dyad", max_turns=turns, critic=critic), n_conversations=n, seed=11)
    fake = AgreeableFakeLLM(latency_s=latency_s)
    gateway = Gateway(fake, cache=None, max_concurrency=max(n, 1))
    written0 = bytes_written()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = await simulate_batch(
        jobs, gateway=gateway, out_path=tmp / "out.jsonl", checkpoint_path=(tmp / "checkpoints.sqlite") if checkpoint else None, concurrency=n,
    )
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    written = bytes_written() - written0
    if result.failed or result.completed != n:
        raise RuntimeError(f"overhead batch was not clean: {result}")
    return {"cpu_s": cpu, "wall_s": wall, "turns": n * turns, "model_calls": fake.calls, "bytes_written": written, "conversations": n}


def bytes_written() -> int:
    """Bytes this process has handed to write() so far (``wchar`` of /proc/self/io): output, SQLite WAL and database."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def measure_cpu(n: int, turns: int, repeats: int) -> list[dict[str, Any]]:
    """CPU per turn of each configuration (best of ``repeats``: least disturbed by other load)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_batch(20, turns, checkpoint=True, critic=True, latency_s=0.0, tmp=Path(tmp) / "warm"))  # imports, templates
        for cfg in CONFIGS:
            runs = []
            for r in range(repeats):
                d = Path(tmp) / f"{cfg['name'].replace(' ', '')}-{r}"
                d.mkdir()
                runs.append(asyncio.run(_batch(n, turns, checkpoint=cfg["checkpoint"], critic=cfg["critic"], latency_s=0.0, tmp=d)))
            best = min(runs, key=lambda x: x["cpu_s"])
            row = {
                **cfg,
                "conversations": n,
                "turns": best["turns"],
                "model_calls": best["model_calls"],
                "cpu_s": best["cpu_s"],
                "cpu_ms_per_turn": 1000 * best["cpu_s"] / best["turns"],
                "cpu_ms_per_model_call": 1000 * best["cpu_s"] / best["model_calls"],
                "cpu_ms_per_turn_all_runs": [1000 * x["cpu_s"] / x["turns"] for x in runs],
                "kb_written_per_conversation": best["bytes_written"] / 1000 / best["conversations"],
            }
            log(f"  {cfg['name']:<20} {row['cpu_ms_per_turn']:.2f} ms CPU per turn ({row['model_calls'] / row['turns']:.1f} calls/turn)")
            rows.append(row)
    return rows


def _rss_child(n: int, turns: int, checkpoint: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_batch(20, 2, checkpoint=checkpoint, critic=False, latency_s=0.0, tmp=Path(tmp) / "warm"))
        base = rss_mb()
        reset_ok = reset_peak_rss()
        d = Path(tmp) / "run"
        d.mkdir()
        measured = asyncio.run(_batch(n, turns, checkpoint=checkpoint, critic=False, latency_s=1.0, tmp=d))
        peak = peak_rss_mb()
    return {"baseline_mb": base, "peak_mb": peak, "peak_reset": reset_ok, "wall_s": measured["wall_s"]}


def measure_rss(n: int, turns: int, checkpoints: tuple[bool, ...] = (False,)) -> list[dict[str, Any]]:
    """Peak RSS above baseline with ``n`` conversations alive at once, per 1,000 conversations."""
    rows = []
    for checkpoint in checkpoints:
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(n), str(turns), str(int(checkpoint))],
            capture_output=True, text=True, check=True,
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
        delta = child["peak_mb"] - child["baseline_mb"]
        row = {"checkpoint": checkpoint, "concurrent_conversations": n, "turns": turns, **child, "peak_rss_mb_per_1000": delta * 1000 / n}
        log(f"  RSS checkpoint={checkpoint}: +{delta:.0f} MiB for {n} concurrent conversations")
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=1000, help="conversations alive at once for the RSS figure")
    parser.add_argument("--rss-checkpoint", action="store_true", help="also measure RSS with the SQLite checkpointer (slow: minutes)")
    parser.add_argument("--rss-child", nargs=3, metavar=("N", "TURNS", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        n, turns, checkpoint = (int(x) for x in args.rss_child)
        print(json.dumps(_rss_child(n, turns, bool(checkpoint))))
        return
    log(f"overhead: {args.conversations} dyads × {args.turns} turns, fake model, latency 0")
    cpu = measure_cpu(args.conversations, args.turns, args.repeats)
    log(f"overhead: peak RSS with {args.concurrent} concurrent conversations")
    rss = measure_rss(args.concurrent, args.turns, (False, True) if args.rss_checkpoint else (False,))
    print(write_result("overhead", {"method": __doc__, "cpu": cpu, "rss": rss}))


if __name__ == "__main__":
    main()
