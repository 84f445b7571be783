"""Experiments as Prefect deployments of the pipeline flow, with their cron/interval schedules."""

from __future__ import annotations

from collections.abc import Sequence

from personae.errors import ConfigError
from personae.experiment import Experiment
from personae.flows.pipeline import pipeline_flow
from personae.flows.schedule import check_schedule, describe_schedule, prefect_schedule

__all__ = ["deployment_for", "prefect_schedule", "describe_schedule", "check_schedule"]


def deployment_for(
    experiment: Experiment,
    *,
    track: bool = True,
    data_dir: str | None = None,
    stages: Sequence[str] | None = None,
):
    """A ``RunnerDeployment`` of :func:`pipeline_flow` named after the experiment.

    Its parameters point at the experiment *file*, so each scheduled run reads the
    file as it is then. The flow is referenced by module path (``personae`` must be
    importable where the runs execute).
    """
    from prefect.deployments.runner import EntrypointType

    if experiment.source is None:
        raise ConfigError("a deployment needs an experiment loaded from a file", field="experiment", expected="load_experiment(path)")
    schedule = prefect_schedule(experiment.schedule, file=experiment.source)
    return pipeline_flow.to_deployment(
        name=experiment.name,
        parameters={"experiment": str(experiment.source), "track": track, "data_dir": data_dir, "stages": list(stages) if stages else None},
        description=experiment.description or f"personae experiment {experiment.name}",
        tags=["personae", experiment.name],
        schedule=schedule,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
