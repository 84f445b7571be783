"""The refinement stage (PEvo): refine an experiment's population toward its survey's human targets, tracked.

:func:`run_refine_experiment` is the plain async entry point (the CLI's ``personae
survey-refine``); :func:`refine_flow` wraps it as a Prefect flow. MLflow gets one parent run
``refine`` (params: split, budget, reviser; metrics: the held-out ``refine.test_before`` /
``test_after`` / ``test_reduction`` and the calibrated test distances) and one **child run
per round** (``round-00`` is the baseline) with that round's train and validation
distances, whether it was kept, and the train divergence per cell.

Output, in the run folder under ``refine/``: ``split.json``, ``round_NN/`` (each round's
survey), ``test_before/`` and ``test_after/``, ``refine.json``, ``personas_refined.jsonl``
and ``calibration.json`` (the test questions' raw, reweighted and mapped distances).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Literal

from pydantic import BaseModel

from personae.errors import ConfigError
from personae.experiment import Experiment, build_gateway_for, taxonomy_for
from personae.flows.context import open_context, run_tags
from personae.flows.survey import _personas
from personae.llm.gateway import Gateway
from personae.survey.calibration import calibrate_report, fit_mapping, rake_weights, target_marginals
from personae.survey.instrument import load_instrument
from personae.survey.realism import RealismReport, realism_report
from personae.survey.refine import RefineConfig, RefineResult, RoundResult, refine_personas
from personae.survey.revise import LLMReviser, MixtureReviser
from personae.survey.split import sub_instrument
from personae.survey.table import read_table
from personae.survey.targets import HumanTargets, load_targets

__all__ = ["RefineOutcome", "run_refine_experiment", "refine_flow", "log_round", "calibrated_test_report"]

log = logging.getLogger(__name__)


class RefineOutcome(BaseModel):
    result: RefineResult
    calibrated: RealismReport | None = None
    run_id: str | None = None
    round_run_ids: list[str] = []


def log_round(run: Any, result: RoundResult) -> None:
    """Log one round to its MLflow child run (a :class:`~personae.tracking.TrackedRun`)."""
    run.log_params({"round": result.round, "note": result.note})
    run.log_metrics({f"refine.{k}": v for k, v in result.metrics().items()})
    run.set_tags({"refine.kept": str(result.kept).lower()})


def calibrated_test_report(result: RefineResult, instrument: Any, targets: HumanTargets) -> RealismReport | None:
    """The refined population's test-split report with the reweighted and mapped columns beside raw.

    Raking uses the targets' cell marginals; the mapping is fitted on the train questions
    of the best round's survey and applied to the test questions only.
    """
    out = result.out_dir
    test_dir = out / ("test_after" if result.best_round else "test_before")
    if not (test_dir / "answers.parquet").exists():
        return None
    test = sub_instrument(instrument, result.split.test)
    frame = read_table(test_dir / "answers.parquet")
    report = realism_report(frame, test, targets)
    marginals = target_marginals(targets)
    raking = None
    if marginals and all(f"attr.{a}" in frame.columns for a in marginals):
        raking = rake_weights(frame, marginals)
    train_frame = read_table(out / f"round_{result.best_round:02d}" / "answers.parquet")
    train = sub_instrument(instrument, result.split.train)
    mapping = fit_mapping(realism_report(train_frame[train_frame["question_id"].isin(result.split.train)], train, targets), train, result.split.train)
    return calibrate_report(report, frame, test, targets, raking=raking, mapping=mapping)


async def run_refine_experiment(
    experiment: str | os.PathLike | Experiment, *, attributes: list[str], data_dir: str | None = None, track: bool = True,
    gateway: Gateway | None = None, reviser: Literal["llm", "mixture"] = "llm", max_rounds: int = 5, patience: int = 1,
    max_model_calls: int | None = None, min_improvement: float = 0.0, split_seed: int | None = None, mode: str | None = None,
) -> RefineOutcome:
    """Refine the experiment's population toward its survey targets (see the module doc).

    ``attributes`` are the taxonomy attributes revisions may change (their allowed values
    come from the taxonomy's domain).
    """
    ctx = open_context(experiment if isinstance(experiment, Experiment) else str(experiment), data_dir=data_dir, track=track)
    exp = ctx.experiment
    spec = exp.survey
    source = None if exp.source is None else str(exp.source)
    if spec is None or spec.targets is None:
        raise ConfigError("refinement needs a survey with human targets", file=source, field="survey.targets", expected="survey: {instrument: ..., targets: ...}")
    if not attributes:
        raise ConfigError("name at least one attribute refinement may revise", field="--attribute", expected="a taxonomy attribute, e.g. values_beliefs.attitude_to_change")
    taxonomy = taxonomy_for(exp)
    revisable: dict[str, list[str]] = {}
    for name in attributes:
        try:
            path = taxonomy.resolve(name)
        except KeyError:
            raise ConfigError("a revisable attribute is not in the taxonomy", field="--attribute", expected="a taxonomy attribute (leaf name or path)", got=name) from None
        leaf = taxonomy.by_path[path]
        if not leaf.domain:
            raise ConfigError("a revisable attribute needs a finite set of values", field="--attribute", expected="a categorical taxonomy attribute", got=path)
        revisable[path] = [str(v) for v in leaf.domain]
    instrument = load_instrument(spec.instrument)
    targets = load_targets(spec.targets, instrument, taxonomy=taxonomy)
    config = RefineConfig(
        attributes=revisable, max_rounds=max_rounds, patience=patience, max_model_calls=max_model_calls, min_improvement=min_improvement,
        split_seed=exp.seed if split_seed is None else split_seed, mode=mode or spec.mode, seed=exp.seed if spec.seed is None else spec.seed,
        concurrency=spec.concurrency, min_cell=spec.min_cell,
    )
    root = ctx.paths.root
    root.mkdir(parents=True, exist_ok=True)
    own_gateway = gateway is None
    gateway = gateway or build_gateway_for(exp, ctx.settings)
    round_ids: list[str] = []
    try:
        personas = await _personas(exp, root, gateway)
        if spec.respondents is not None:
            personas = personas[: spec.respondents]
        chosen = LLMReviser(gateway) if reviser == "llm" else MixtureReviser()
        with ctx.tracker.run("refine", tags=run_tags(exp, kind="refine", stage="refine")) as parent:
            parent.log_params({"refine.reviser": reviser, "refine.attributes": ",".join(revisable), "refine.max_rounds": max_rounds,
                               "refine.patience": patience, "refine.max_model_calls": max_model_calls, "refine.min_improvement": min_improvement,
                               "refine.split_seed": config.split_seed, "survey.mode": config.mode, "survey.instrument": instrument.name,
                               "survey.targets": str(spec.targets), **{f"model.{k}": v for k, v in gateway.describe().items()}})

            def on_round(result: RoundResult) -> None:
                with ctx.tracker.run(f"round-{result.round:02d}", parent_run_id=parent.run_id, tags={"personae.kind": "refine-round"}) as child:
                    log_round(child, result)
                    if child.run_id:
                        round_ids.append(child.run_id)

            result, _ = await refine_personas(instrument, personas, targets, gateway=gateway, reviser=chosen, config=config,
                                              out_dir=root / "refine", on_round=on_round)
            parent.log_params({"refine.train": ",".join(result.split.train), "refine.validation": ",".join(result.split.validation),
                               "refine.test": ",".join(result.split.test), "refine.stop_reason": result.stop_reason})
            metrics = {f"refine.{k}": v for k, v in result.metrics().items()}
            calibrated = calibrated_test_report(result, instrument, targets)
            files = [result.out_dir / n for n in ("split.json", "refine.json", "personas_refined.jsonl")]
            if calibrated is not None:
                path = result.out_dir / "calibration.json"
                path.write_text(json.dumps({"distances": calibrated.distances(), "calibration": calibrated.calibration}, indent=2, default=str), encoding="utf-8")
                files.append(path)
                flat = calibrated.metrics("test")
                for column, key in (("raw", "test.mean_distance"), ("reweighted", "test.mean_distance_reweighted"), ("mapped", "test.mean_distance_mapped")):
                    if key in flat:
                        metrics[f"refine.test_distance_{column}"] = flat[key]
            parent.log_metrics(metrics)
            parent.log_artifacts(files)
            run_id = parent.run_id
    finally:
        if own_gateway:
            await gateway.aclose()
    return RefineOutcome(result=result, calibrated=calibrated, run_id=run_id, round_run_ids=round_ids)


def refine_flow(experiment: str, attributes: list[str], data_dir: str | None = None, track: bool = True, reviser: str = "llm",
                max_rounds: int = 5, patience: int = 1, max_model_calls: int | None = None) -> dict[str, float]:
    """Refinement as a Prefect flow (for deployments); returns the held-out metrics."""
    import asyncio

    from prefect import flow

    @flow(name="personae-refine", log_prints=False)
    def _refine(experiment: str, attributes: list[str], data_dir: str | None, track: bool, reviser: str, max_rounds: int, patience: int,
                max_model_calls: int | None) -> dict[str, float]:
        outcome = asyncio.run(run_refine_experiment(experiment, attributes=attributes, data_dir=data_dir, track=track, reviser=reviser,  # type: ignore[arg-type]
                                                    max_rounds=max_rounds, patience=patience, max_model_calls=max_model_calls))
        return outcome.result.metrics()

    return _refine(experiment, attributes, data_dir, track, reviser, max_rounds, patience, max_model_calls)
