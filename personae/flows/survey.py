"""The survey stage: field an experiment's ``survey:`` to its population, report realism, track it.

:func:`run_survey_experiment` is the plain async entry point (the CLI's ``personae
survey``); :func:`survey_flow` wraps it as a Prefect flow for deployments. Output, in
the experiment's run folder under ``survey/<mode>/``: ``answers.parquet``/``answers.csv``
(the tidy table), ``survey_conversations.jsonl``, ``realism.json`` and ``realism.csv`` (raw
figures; with targets, the post-hoc reweighted and mapped distances beside them), ``scorecard.html``
/ ``scorecard.json`` with the survey section, and the plots. MLflow gets one run
``survey`` (see :func:`log_survey`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from personae.errors import ConfigError
from personae.experiment import Experiment, build_gateway_for
from personae.flows.context import open_context, run_tags
from personae.jsonl import read_jsonl, write_jsonl
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.survey.calibration import calibrate_survey
from personae.survey.instrument import load_instrument
from personae.survey.realism import RealismReport, realism_report
from personae.survey.run import SurveyResult, run_survey
from personae.survey.targets import load_targets

__all__ = ["SurveyOutcome", "run_survey_experiment", "survey_flow", "log_survey"]

log = logging.getLogger(__name__)


class SurveyOutcome(BaseModel):
    """What ``personae survey`` did: the run's result, its realism report and where things are."""

    result: SurveyResult
    report: RealismReport
    out_dir: Path
    files: dict[str, Path]
    run_id: str | None = None


def log_survey(run: Any, outcome_files: dict[str, Path], report: RealismReport, result: SurveyResult, params: dict[str, Any]) -> None:
    """Log a survey to an MLflow run (a :class:`~personae.tracking.TrackedRun`): params, the
    realism metrics (``survey.*``), counts, and the table, report and plots as artifacts."""
    run.log_params(params)
    metrics = report.metrics("survey")
    metrics.update({
        "survey.completed": result.batch.completed, "survey.failed": result.batch.failed,
        "survey.skipped": result.batch.skipped, "survey.rows": result.rows,
    })
    run.log_metrics(metrics)
    run.log_artifacts([p for k, p in outcome_files.items() if not k.startswith("plot_")])
    run.log_artifacts([p for k, p in outcome_files.items() if k.startswith("plot_")], artifact_path="plots")
    if report.profiles.collapsed:
        run.set_tags({"survey.mode_collapse": "true"})


async def _personas(experiment: Experiment, root: Path, gateway: Gateway) -> list[Persona]:
    personas_path = root / "personas.jsonl"
    if experiment.personas_file is not None:
        return read_jsonl(experiment.personas_file, Persona, unique="id")
    spec = experiment.population
    if personas_path.exists():
        personas = read_jsonl(personas_path, Persona, unique="id")
        if len(personas) >= spec.size:
            return personas
    from personae.population import generate_population

    needs_model = spec.craft or spec.llm_validate
    await generate_population(spec, gateway=gateway if needs_model else None, embedder=None, qdrant=None, out_dir=root)
    return read_jsonl(personas_path, Persona, unique="id")


async def run_survey_experiment(
    experiment: str | os.PathLike | Experiment,
    *,
    data_dir: str | None = None,
    track: bool = True,
    gateway: Gateway | None = None,
    mode: str | None = None,
    targets: str | os.PathLike | None = None,
    respondents: int | None = None,
    calibrate: bool | None = None,
) -> SurveyOutcome:
    """Field the experiment's survey to its population; write the table and the realism report; track it.

    ``gateway`` overrides the experiment's models (tests pass one over the test server);
    ``mode``, ``targets``, ``respondents`` (survey the first N personas) and ``calibrate``
    override the ``survey:`` section. With targets and ``calibrate``, the report carries the
    reweighted and mapped columns beside the raw ones (:func:`~personae.survey.calibration.calibrate_survey`).
    """
    ctx = open_context(experiment if isinstance(experiment, Experiment) else str(experiment), data_dir=data_dir, track=track)
    exp = ctx.experiment
    spec = exp.survey
    if spec is None:
        raise ConfigError("the experiment has no survey section", file=None if exp.source is None else str(exp.source), field="survey", expected="survey: {instrument: ..., targets: ...}")
    if respondents is not None and respondents < 1:
        raise ConfigError("respondents must be at least 1", field="respondents", expected="an integer ≥ 1", got=respondents)
    overrides = (("mode", mode), ("targets", None if targets is None else Path(targets)), ("respondents", respondents), ("calibrate", calibrate))
    updates = {k: v for k, v in overrides if v is not None}
    spec = spec.model_copy(update=updates)
    instrument = load_instrument(spec.instrument)
    from personae.experiment import taxonomy_for

    human = load_targets(spec.targets, instrument, taxonomy=taxonomy_for(exp)) if spec.targets is not None else None
    root = ctx.paths.root
    root.mkdir(parents=True, exist_ok=True)
    out_dir = root / "survey" / spec.mode
    own_gateway = gateway is None
    gateway = gateway or build_gateway_for(exp, ctx.settings)
    try:
        personas = await _personas(exp, root, gateway)
        if spec.respondents is not None:
            personas = personas[: spec.respondents]
        if exp.personas_file is not None and not (root / "personas.jsonl").exists():
            write_jsonl(root / "personas.jsonl", personas)
        with ctx.tracker.run("survey", tags=run_tags(exp, kind="survey", stage="survey")) as run:
            result, frame = await run_survey(
                instrument, personas, gateway=gateway, out_dir=out_dir, mode=spec.mode,
                seed=exp.seed if spec.seed is None else spec.seed, scenario=exp.scenarios[0], concurrency=spec.concurrency,
                retry_failed=exp.simulation.retry_failed, temperature=spec.temperature, max_tokens=spec.max_tokens,
            )
            seed = exp.seed if spec.seed is None else spec.seed
            report = realism_report(frame, instrument, human, min_cell=spec.min_cell, mode=spec.mode)
            if human is not None and spec.calibrate:
                report = calibrate_survey(report, frame, instrument, human, seed=seed if spec.split_seed is None else spec.split_seed)
            files = _write_report(out_dir, report, result, n_personas=len(personas), title=f"{exp.name}: survey {instrument.name}")
            params = {
                "survey.instrument": instrument.name, "survey.instrument_fingerprint": instrument.fingerprint(),
                "survey.mode": spec.mode, "survey.targets": str(spec.targets or ""), "survey.respondents": len(personas),
                "survey.seed": seed, **{f"model.{k}": v for k, v in gateway.describe().items()},
            }
            split = (report.calibration or {}).get("split")
            if split:
                params.update({"survey.split_seed": split["seed"], "survey.split_train": ",".join(split["train"]),
                               "survey.split_mapped_on": ",".join(split["mapped_on"])})
            log_survey(run, files, report, result, params)
            run_id = run.run_id
    finally:
        if own_gateway:
            await gateway.aclose()
    return SurveyOutcome(result=result, report=report, out_dir=out_dir, files=files, run_id=run_id)


def _write_report(out_dir: Path, report: RealismReport, result: SurveyResult, *, n_personas: int, title: str) -> dict[str, Path]:
    from personae.evaluation.scorecard import Scorecard

    files: dict[str, Path] = {"parquet": result.table["parquet"], "csv": result.table["csv"]}
    realism = out_dir / "realism.json"
    tmp = realism.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, realism)
    files["realism"] = realism
    files["realism_csv"] = _write_realism_csv(out_dir / "realism.csv", report)
    card = Scorecard(title=title, n_conversations=result.respondents, n_personas=n_personas, survey=report)
    for name, path in card.write(out_dir).items():
        files[name if name.startswith("plot_") else f"scorecard_{name}"] = path
    return files


def _write_realism_csv(path: Path, report: RealismReport) -> Path:
    """Per question: the raw figures, and beside them the post-hoc reweighted and mapped distances."""
    import csv

    split = (report.calibration or {}).get("split") or {}
    part = {qid: name for name in ("train", "validation", "test") for qid in split.get(name, [])}
    columns = ["question", "type", "metric", "answered", "asked", "distance", "variance_ratio", "refusal_rate",
               "reweighted_distance", "mapped_distance", "split"]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for q in report.questions:
            writer.writerow([q.id, q.type, q.metric or "", q.n_answered, q.n_asked, q.distance, q.variance_ratio, q.refusal_rate,
                             q.reweighted_distance, q.mapped_distance, part.get(q.id, "")])
    os.replace(tmp, path)
    return path


def survey_flow(experiment: str, data_dir: str | None = None, track: bool = True) -> dict[str, float]:
    """The survey as a Prefect flow (for deployments); returns the realism metrics."""
    import asyncio

    from prefect import flow

    @flow(name="personae-survey", log_prints=False)
    def _survey(experiment: str, data_dir: str | None, track: bool) -> dict[str, float]:
        outcome = asyncio.run(run_survey_experiment(experiment, data_dir=data_dir, track=track))
        return outcome.report.metrics("survey")

    return _survey(experiment, data_dir, track)
