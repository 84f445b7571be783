"""Refinement toward human answers (PEvo): revise personas on train questions, keep what validation confirms.

:func:`refine_personas` runs the rounds (no Prefect, no MLflow: :mod:`personae.flows.refine`
tracks them):

1. the targeted questions are split (:func:`~personae.survey.split.split_questions`, seeded,
   written to ``split.json``); the population is surveyed on train + validation
   (round 0, the baseline);
2. each round builds the :class:`~personae.survey.revise.TrainingView` of the current best
   population (train questions only), asks the reviser for revisions, applies them,
   surveys the candidate on train + validation, and **keeps** it only when the mean
   validation distance improves by more than ``min_improvement``;
3. it stops after ``patience`` rounds without improvement, after ``max_rounds``, or when
   the gateway has made ``max_model_calls`` model calls (checked before each round);
4. the test questions, untouched so far, are asked once of the original and once of the
   refined population: the held-out figures (``test_before``, ``test_after``).

The test questions never reach a reviser: it receives only the training view, built
from the train split. Every round surveys a fresh folder (``round_NN/``), since revised
personas keep their ids.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from personae.jsonl import write_jsonl
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.survey.elicit import Mode
from personae.survey.instrument import Instrument
from personae.survey.realism import realism_report
from personae.survey.revise import Reviser, apply_revisions, training_view
from personae.survey.run import run_survey
from personae.survey.split import QuestionSplit, split_questions, sub_instrument
from personae.survey.targets import HumanTargets

__all__ = ["RefineConfig", "RoundResult", "RefineResult", "refine_personas", "split_distance"]

log = logging.getLogger(__name__)


class RefineConfig(BaseModel):
    """How refinement runs (the ``personae survey-refine`` options)."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, list[str]] = Field(min_length=1, description="revisable attribute paths → allowed values")
    max_rounds: int = Field(5, ge=1)
    patience: int = Field(1, ge=1, description="rounds in a row without improvement before stopping")
    min_improvement: float = Field(0.0, ge=0.0, description="a round is kept when validation distance drops by more than this")
    max_model_calls: int | None = Field(None, ge=1, description="stop once the gateway has made this many model calls")
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)
    mode: Mode = "two_pass"
    seed: int = 0
    concurrency: int = Field(8, ge=1)
    min_cell: int = Field(1, ge=1)


class RoundResult(BaseModel):
    """One round: the candidate's distances and whether it was kept (round 0: the baseline)."""

    round: int
    kept: bool
    train_distance: float | None
    validation_distance: float | None
    best_validation_distance: float | None
    revised_personas: int = 0
    changes: list[dict[str, Any]] = Field(default_factory=list)
    cells: dict[str, float] = Field(default_factory=dict, description="train divergence per cell the reviser saw")
    model_calls: int = 0
    note: str = ""

    def metrics(self) -> dict[str, float]:
        out = {"train_distance": self.train_distance, "validation_distance": self.validation_distance,
               "best_validation_distance": self.best_validation_distance, "kept": float(self.kept),
               "revised_personas": self.revised_personas, "model_calls": self.model_calls}
        out.update({"cell." + re.sub(r"[^A-Za-z0-9_./ -]+", "_", k): v for k, v in self.cells.items()})  # MLflow-safe names
        return {k: float(v) for k, v in out.items() if v is not None}


class RefineResult(BaseModel):
    split: QuestionSplit
    rounds: list[RoundResult]
    stop_reason: str
    test_before: float | None
    test_after: float | None
    best_round: int
    out_dir: Path

    @property
    def test_reduction(self) -> float | None:
        """Relative drop of the held-out distance (0.5: halved)."""
        if self.test_before in (None, 0) or self.test_after is None:
            return None
        return 1.0 - self.test_after / self.test_before

    def metrics(self) -> dict[str, float]:
        out = {"test_before": self.test_before, "test_after": self.test_after, "test_reduction": self.test_reduction,
               "rounds": len(self.rounds) - 1, "best_round": self.best_round}
        return {k: float(v) for k, v in out.items() if v is not None}


def split_distance(frame: pd.DataFrame, instrument: Instrument, targets: HumanTargets, qids: Sequence[str]) -> float | None:
    """Mean distance to the human overall distributions over ``qids``."""
    report = realism_report(frame[frame["question_id"].isin(list(qids))], instrument, targets)
    values = [report.question(q).distance for q in qids]
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _model_calls(gateway: Gateway) -> int:
    return gateway.usage.total().model_calls


async def refine_personas(
    instrument: Instrument, personas: Sequence[Persona], targets: HumanTargets, *, gateway: Gateway, reviser: Reviser,
    config: RefineConfig, out_dir: str | os.PathLike, on_round: Callable[[RoundResult], None] | None = None,
) -> tuple[RefineResult, list[Persona]]:
    """Refine ``personas`` toward ``targets`` (see the module doc); returns the result and the best personas.

    ``on_round`` is called with each round's result as it ends (round 0 first).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = split_questions(instrument, targets, seed=config.split_seed, fractions=config.fractions)
    (out / "split.json").write_text(json.dumps(split.model_dump(), indent=2), encoding="utf-8")
    work = sub_instrument(instrument, split.train + split.validation, name_suffix=" (train+validation)")

    async def survey(people: Sequence[Persona], inst: Instrument, folder: str) -> pd.DataFrame:
        _, frame = await run_survey(inst, list(people), gateway=gateway, out_dir=out / folder, mode=config.mode, seed=config.seed, concurrency=config.concurrency)
        return frame

    def emit(result: RoundResult) -> None:
        rounds.append(result)
        log.info("refine round %d: validation %.4f (best %.4f), %s", result.round, result.validation_distance or float("nan"),
                 result.best_validation_distance or float("nan"), "kept" if result.kept else "dropped")
        if on_round is not None:
            on_round(result)

    rounds: list[RoundResult] = []
    best, best_round = list(personas), 0
    best_frame = await survey(best, work, "round_00")
    best_val = split_distance(best_frame, instrument, targets, split.validation)
    emit(RoundResult(round=0, kept=True, train_distance=split_distance(best_frame, instrument, targets, split.train),
                     validation_distance=best_val, best_validation_distance=best_val, model_calls=_model_calls(gateway), note="baseline"))
    stale, stop_reason = 0, f"budget: {config.max_rounds} rounds"
    for k in range(1, config.max_rounds + 1):
        if config.max_model_calls is not None and _model_calls(gateway) >= config.max_model_calls:
            stop_reason = f"budget: {config.max_model_calls} model calls"
            break
        view = training_view(best_frame, instrument, targets, split, config.attributes, min_cell=config.min_cell)
        cells = {c.cell: c.mean_distance for c in view.cells}
        proposals = await reviser.revise(best, view, seed=config.seed + k)
        candidate, changes = apply_revisions(best, proposals, config.attributes)
        if not changes:
            stale += 1
            emit(RoundResult(round=k, kept=False, train_distance=view.mean_distance, validation_distance=None, best_validation_distance=best_val,
                             cells=cells, model_calls=_model_calls(gateway), note="no revision proposed"))
        else:
            frame = await survey(candidate, work, f"round_{k:02d}")
            val = split_distance(frame, instrument, targets, split.validation)
            kept = val is not None and (best_val is None or val < best_val - config.min_improvement)
            if kept:
                best, best_frame, best_val, best_round, stale = candidate, frame, val, k, 0
            else:
                stale += 1
            emit(RoundResult(round=k, kept=kept, train_distance=split_distance(frame, instrument, targets, split.train), validation_distance=val,
                             best_validation_distance=best_val, revised_personas=len(changes), changes=changes, cells=cells,
                             model_calls=_model_calls(gateway)))
        if stale >= config.patience:
            stop_reason = f"no improvement in {stale} round(s)"
            break
    test = sub_instrument(instrument, split.test, name_suffix=" (test)")
    before_frame = await survey(list(personas), test, "test_before")
    test_before = split_distance(before_frame, instrument, targets, split.test)
    test_after = test_before if best_round == 0 else split_distance(await survey(best, test, "test_after"), instrument, targets, split.test)
    write_jsonl(out / "personas_refined.jsonl", best)
    result = RefineResult(split=split, rounds=rounds, stop_reason=stop_reason, test_before=test_before, test_after=test_after, best_round=best_round, out_dir=out)
    (out / "refine.json").write_text(json.dumps(result.model_dump(mode="json") | {"test_reduction": result.test_reduction}, indent=2), encoding="utf-8")
    return result, best
