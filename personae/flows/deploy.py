"""Experiments as Prefect deployments of the pipeline flow, with their cron/interval schedules."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from personae.errors import ConfigError
from personae.experiment import Experiment, ScheduleConfig
from personae.flows.pipeline import pipeline_flow

__all__ = ["deployment_for", "prefect_schedule", "describe_schedule"]


def prefect_schedule(schedule: ScheduleConfig | None):
    """The Prefect schedule of an experiment's ``schedule`` (``None`` = run on demand only)."""
    if schedule is None:
        return None
    from prefect.schedules import Cron, Interval

    if schedule.cron is not None:
        return Cron(schedule.cron, timezone=schedule.timezone)
    # anchored in the past so the first run is due at once, then every interval
    anchor = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    return Interval(datetime.timedelta(seconds=schedule.interval_s), anchor_date=anchor, timezone=schedule.timezone)


def describe_schedule(schedule: ScheduleConfig | None) -> str:
    """A short human description, e.g. ``every 3600s`` or ``cron 0 3 * * *``."""
    if schedule is None:
        return "on demand (no schedule)"
    if schedule.cron is not None:
        return f"cron {schedule.cron}" + (f" ({schedule.timezone})" if schedule.timezone else "")
    return f"every {schedule.interval_s:g}s"


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
    schedule = prefect_schedule(experiment.schedule)
    return pipeline_flow.to_deployment(
        name=experiment.name,
        parameters={"experiment": str(experiment.source), "track": track, "data_dir": data_dir, "stages": list(stages) if stages else None},
        description=experiment.description or f"personae experiment {experiment.name}",
        tags=["personae", experiment.name],
        schedule=schedule,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
