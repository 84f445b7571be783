"""The pipeline flow: generate → simulate → evaluate, tracked as one MLflow parent run.

This is what ``personae run`` and the deployments of ``personae serve`` execute.
Its parameters are plain JSON (a path, stage names, flags), so a deployment can
carry them; the experiment file is read when the run starts.
"""

from __future__ import annotations

import logging
import time

from prefect import flow
from pydantic import BaseModel, Field

from personae.costs import BudgetSpend
from personae.errors import BudgetExceeded, ConfigError
from personae.flows.context import STAGES, budget_stop_of, experiment_params, open_context, run_tags, write_run_config
from personae.flows.evaluate import evaluate_flow
from personae.flows.generate import generate_flow
from personae.flows.progress import LocalCallback, ProgressCallback
from personae.flows.simulate import simulate_flow, task_runner_for
from personae.tracking import LIMIT_TOTALS, enable_langgraph_tracing

__all__ = ["pipeline_flow", "check_stages", "PipelineResult"]

log = logging.getLogger(__name__)

# usage counters that add up across stages
_ADDITIVE = (
    "calls", "model_calls", "cached_calls", "prompt_tokens", "completion_tokens", "tokens", "failures", "cost",
    "embeddings.calls", "embeddings.inputs", "embeddings.tokens", "embeddings.cost",
)
_LIMIT_TOTALS = frozenset(f"limits.{name}" for name in LIMIT_TOTALS)


class PipelineResult(BaseModel):
    """What a pipeline run did: metrics (stage-prefixed, plus ``usage.*`` totals), where to look."""

    experiment: str
    stages: list[str]
    metrics: dict[str, float] = Field(default_factory=dict)
    run_dir: str
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    budget_stop: str | None = Field(None, description="why the run stopped early: the budget limit reached (None: it did not)")


def check_stages(stages: list[str] | None) -> list[str]:
    """The stages to run, in pipeline order; unknown names raise :class:`ConfigError`."""
    if not stages:
        return list(STAGES)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError("unknown stage", field="stage", expected=" | ".join(STAGES), got=unknown)
    return [s for s in STAGES if s in stages]


@flow(name="personae-pipeline")
def pipeline_flow(
    experiment: str,
    stages: list[str] | None = None,
    track: bool = True,
    data_dir: str | None = None,
    progress: ProgressCallback | None = None,
) -> PipelineResult:
    """Run the experiment file at ``experiment``: its ``stages`` (default all) in order.

    Returns every stage's metrics prefixed by the stage name, plus ``usage.*``
    totals, and the MLflow parent run id. The experiment's ``budget`` counts over every
    stage: a stage that reaches it stops cleanly (what finished is written), the stages
    after it do not run, and the result's ``budget_stop`` says why. With ``track`` (and ``tracking.enabled`` in the experiment) the run
    is an MLflow parent run with one child per stage.
    """
    started = time.perf_counter()
    chosen = check_stages(stages)
    ctx = open_context(experiment, data_dir=data_dir, track=track)
    exp = ctx.experiment
    if ctx.tracker.enabled and exp.tracking.langgraph_tracing:
        enable_langgraph_tracing(ctx.settings, exp.name)
    stage_flows = {
        "generate": generate_flow,
        "simulate": simulate_flow.with_options(task_runner=task_runner_for(exp.simulation, processes=exp.simulation_processes())),
        "evaluate": evaluate_flow,
    }
    progress = LocalCallback(progress) if progress is not None else None
    totals: dict[str, float] = {}
    spent = BudgetSpend()  # of the experiment's budget, by the stages so far
    stop: BudgetExceeded | None = None
    with ctx.tracker.run("pipeline", tags=run_tags(exp, kind="pipeline")) as parent:
        parent.log_params({**experiment_params(exp, ctx.settings), "stages": ",".join(chosen)})
        if exp.source is not None:
            parent.log_artifacts([exp.source])
        for stage in chosen:
            metrics = stage_flows[stage](
                experiment=str(exp.source) if exp.source else experiment,
                data_dir=data_dir, parent_run_id=parent.run_id, track=track, progress=progress,
                budget_spent=spent.metrics() if exp.budget.limited else None,
            )
            for key, value in metrics.items():
                totals[f"{stage}.{key}"] = value
                name = key.removeprefix("usage.")
                if (key.startswith("usage.") and name in _ADDITIVE) or key in _LIMIT_TOTALS:
                    totals[key] = totals.get(key, 0.0) + value
            spent = spent + BudgetSpend.from_metrics(metrics)
            stop = budget_stop_of(metrics)
            if stop is not None:
                log.warning("%s stopped by the budget: %s; the stages after it do not run", stage, stop)
                totals.update({"budget.stopped": 1.0, f"budget.stopped_in.{stage}": 1.0})
                break
        if exp.budget.limited:
            totals.update(spent.metrics())
        write_run_config(exp, ctx.settings, ctx.paths)  # after the stages: a run refused for bad input writes nothing
        totals["wall_s"] = time.perf_counter() - started
        parent.log_metrics(totals)
        parent.set_tags({"personae.run_dir": str(ctx.paths.root)})
    return PipelineResult(
        experiment=exp.name, stages=chosen, metrics=totals, run_dir=str(ctx.paths.root),
        mlflow_run_id=parent.run_id, tracking_uri=ctx.settings.mlflow_tracking_uri if parent.run_id else None,
        budget_stop=None if stop is None else f"{stop} (in the {stage} stage)",
    )
