"""Progress events the flows emit while they work (the CLI draws them as a rich progress bar)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

__all__ = ["ProgressEvent", "ProgressCallback", "ProgressTotals", "LocalCallback", "emit"]


class ProgressEvent(BaseModel):
    """Where one unit of work (a stage, or one shard of the simulation) stands.

    Counts are cumulative for that unit, so a receiver keeps the latest event per
    ``(stage, unit)`` and sums over units.
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    unit: str = "0"
    done: int = 0
    total: int = 0
    calls: int = 0
    model_calls: int = 0
    tokens: int = 0
    finished: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTotals:
    """Latest event per unit, summed per stage (thread-safe enough for counters: one dict write per event)."""

    def __init__(self) -> None:
        self._units: dict[tuple[str, str], ProgressEvent] = {}

    def add(self, event: ProgressEvent) -> ProgressEvent:
        """Record ``event``; return the stage's sum over its units."""
        self._units[(event.stage, event.unit)] = event
        return self.stage(event.stage)

    def stage(self, stage: str) -> ProgressEvent:
        """The sum of the latest events of every unit of ``stage``."""
        units = [e for (s, _), e in list(self._units.items()) if s == stage]
        return ProgressEvent(
            stage=stage,
            unit="*",
            done=sum(e.done for e in units),
            total=sum(e.total for e in units),
            calls=sum(e.calls for e in units),
            model_calls=sum(e.model_calls for e in units),
            tokens=sum(e.tokens for e in units),
            finished=bool(units) and all(e.finished for e in units),
        )


class LocalCallback:
    """A progress callback that stays in its process: pickled (e.g. inside a Prefect flow-run
    context shipped to Dask workers) it becomes a no-op instead of failing to serialise."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback

    def __call__(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    def __reduce__(self):  # noqa: D105
        return (LocalCallback, (None,))


def emit(callback: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``callback`` if there is one; a failing receiver never stops the work."""
    if callback is None:
        return
    try:
        callback(event)
    except Exception:  # noqa: BLE001 - progress display must not break a run
        import logging

        logging.getLogger(__name__).debug("progress callback failed", exc_info=True)
