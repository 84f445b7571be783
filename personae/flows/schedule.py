"""An experiment's ``schedule`` as a Prefect schedule, checked by Prefect's own validators.

The experiment file is read below ``flows/``, where Prefect may not be imported, so a
cron string, time zone or interval is checked here, by the schedule models Prefect
validates a deployment's schedule with, whenever the CLI or a flow loads an experiment:
a string Prefect would refuse when serving is refused when the file is read.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from personae.errors import ConfigError
from personae.experiment import Experiment, ScheduleConfig

__all__ = ["check_schedule", "prefect_schedule", "describe_schedule"]

_EXPECTED = {
    "cron": "a cron string with 5 fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *', or @hourly, @daily, @weekly, @monthly, @yearly",
    "timezone": "an IANA time zone name, e.g. Europe/Paris",
    "interval_s": "a positive number of seconds, at least one microsecond",
}


def check_schedule(experiment: Experiment) -> None:
    """Raise :class:`ConfigError` naming the experiment file and ``schedule.<field>`` if Prefect
    would refuse the experiment's schedule (a cron string, time zone or interval). No schedule is fine."""
    _validate(experiment.schedule, experiment.source)


def _validate(schedule: ScheduleConfig | None, file: str | Path | None) -> None:
    if schedule is None:
        return
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from pydantic import ValidationError

    main = "cron" if schedule.cron is not None else "interval_s"
    try:
        if schedule.cron is not None:
            CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
        else:
            IntervalSchedule(interval=_interval(schedule, file), timezone=schedule.timezone)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = str(error["loc"][0]) if error["loc"] else ("timezone" if schedule.timezone else main)
        field = "interval_s" if loc == "interval" else loc
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"invalid schedule: {message}", file=file, field=f"schedule.{field}", expected=_EXPECTED.get(field),
            got=getattr(schedule, field, None),
        ) from None


def _interval(schedule: ScheduleConfig, file: str | Path | None) -> datetime.timedelta:
    try:
        return datetime.timedelta(seconds=schedule.interval_s)
    except (OverflowError, ValueError):  # inf, nan, or beyond timedelta's 999,999,999 days
        raise ConfigError(
            "invalid schedule: the interval is too long", file=file, field="schedule.interval_s",
            expected=_EXPECTED["interval_s"] + ", below 999,999,999 days", got=schedule.interval_s,
        ) from None


def prefect_schedule(schedule: ScheduleConfig | None, *, file: str | Path | None = None):
    """The Prefect schedule of an experiment's ``schedule`` (``None`` = run on demand only).

    Raises :class:`ConfigError` (naming ``file``, the experiment's) when Prefect would refuse it.
    """
    if schedule is None:
        return None
    _validate(schedule, file)
    from prefect.schedules import Cron, Interval

    if schedule.cron is not None:
        return Cron(schedule.cron, timezone=schedule.timezone)
    # anchored in the past so the first run is due at once, then every interval
    anchor = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    return Interval(_interval(schedule, file), anchor_date=anchor, timezone=schedule.timezone)


def describe_schedule(schedule: ScheduleConfig | None) -> str:
    """A short human description, e.g. ``every 3600s`` or ``cron 0 3 * * *``."""
    if schedule is None:
        return "on demand (no schedule)"
    if schedule.cron is not None:
        return f"cron {schedule.cron}" + (f" ({schedule.timezone})" if schedule.timezone else "")
    return f"every {schedule.interval_s:g}s"
