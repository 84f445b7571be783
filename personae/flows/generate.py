"""The generate stage: a population from the experiment's spec (or its personas file)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from personae.costs import BudgetMeter
from personae.errors import BudgetExceeded, ConfigError, StoreLockedError
from personae.experiment import Experiment, build_gateway_for
from personae.flows.context import StageResult, embedder_for, run_stage, settings_in_task
from personae.flows.progress import ProgressCallback, ProgressEvent, emit
from personae.jsonl import read_jsonl, write_jsonl
from personae.memory import open_qdrant
from personae.models import Persona

__all__ = ["generate_flow", "generate_population_task"]

log = logging.getLogger(__name__)


@task(name="generate-population", cache_policy=NONE)
async def generate_population_task(
    experiment: Experiment, overrides: dict[str, Any], progress: ProgressCallback | None = None,
    meter: BudgetMeter | None = None,
) -> StageResult:
    """Generate the population into the run folder (resumable), or copy the personas file there.

    With a budget ``meter``, reaching a limit stops the generation: the batches already
    written stay, the result says which limit stopped it, and a rerun resumes.
    """
    settings, paths = settings_in_task(experiment, overrides)
    paths.root.mkdir(parents=True, exist_ok=True)
    if experiment.personas_file is not None:
        personas = read_jsonl(experiment.personas_file, Persona, unique="id")
        if not personas:
            raise ConfigError("the personas file is empty", file=str(experiment.personas_file), field="personas_file", expected="at least one persona")
        write_jsonl(paths.personas, personas)
        emit(progress, ProgressEvent(stage="generate", done=len(personas), total=len(personas), finished=True))
        return StageResult.of({"personas": len(personas)})

    from personae.population import generate_population

    meter = meter.child() if meter is not None else None
    gateway = build_gateway_for(experiment, settings, meter=meter)

    def on_progress(done: int, total: int, finished: bool = False) -> None:
        usage = gateway.usage.total()
        emit(progress, ProgressEvent(
            stage="generate", done=done, total=total, calls=usage.calls, model_calls=usage.model_calls,
            tokens=usage.prompt_tokens + usage.completion_tokens, finished=finished,
        ))

    try:
        qdrant = open_qdrant(settings)
    except StoreLockedError as exc:  # de-duplication still works in memory
        log.warning("%s; de-duplicating in memory for this run", exc)
        qdrant = None
    stop: BudgetExceeded | None = None
    try:
        report = await generate_population(
            experiment.population, gateway=gateway, embedder=embedder_for(settings, gateway=gateway, meter=meter), qdrant=qdrant,
            out_dir=paths.root, on_progress=on_progress,
        )
    except BudgetExceeded as exc:  # the batches written so far stay; a rerun resumes after them
        log.warning("generate: %s; the personas written so far are kept", exc)
        stop, report = exc, None
    finally:
        if qdrant is not None:
            qdrant.close()
        await gateway.aclose()
    count = sum(1 for _ in read_jsonl(paths.personas, Persona)) if paths.personas.is_file() else 0
    on_progress(count, count if stop is None else experiment.population.size, finished=True)
    metrics = {f"population.{k}": float(v) for k, v in report.metrics().items()} if report is not None else {}
    metrics["personas"] = count
    return StageResult.of(metrics, gateway, meter=meter, stop=stop)


@flow(name="personae-generate")
def generate_flow(
    experiment: str,
    data_dir: str | None = None,
    parent_run_id: str | None = None,
    track: bool = True,
    progress: ProgressCallback | None = None,
    budget_spent: dict[str, float] | None = None,
) -> dict[str, float]:
    """Generate the experiment's population into its run folder (tracked as the ``generate`` child run).

    ``budget_spent``: what earlier stages of the run spent of the experiment's budget."""
    return run_stage(
        "generate", generate_population_task, experiment, data_dir=data_dir, parent_run_id=parent_run_id,
        track=track, progress=progress, artifacts=lambda p: [p.personas, p.rejects, p.population_report],
        plots=lambda path: path.name.startswith("population"), budget_spent=budget_spent,
    )
