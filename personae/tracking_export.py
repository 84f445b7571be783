"""Logging an export to MLflow: an ``export`` run in the experiment's MLflow experiment, the dataset folder as its artifact.

Kept out of :mod:`personae.export` (nothing below the flows layer imports MLflow) and out of
:mod:`personae.tracking`, which is the adapter every stage uses.
"""

from __future__ import annotations

from typing import Any

from personae.export import ExportResult
from personae.settings import Settings
from personae.tracking import Tracker

__all__ = ["log_export", "EXPORT_ARTIFACT_PATH"]

EXPORT_ARTIFACT_PATH = "export"


def log_export(settings: Settings, result: ExportResult, *, enabled: bool = True) -> str | None:
    """Log ``result`` as a run named ``export`` of its experiment; return the MLflow run id (``None`` when off).

    Params: the options and the folders. Metrics: rows per table, scan findings per scan,
    records dropped. Artifact: the whole dataset folder under ``export/``. The run is tagged
    with the pipeline run that wrote the run folder, when one is tracked.
    """
    tracker = Tracker(settings, result.experiment, enabled=enabled)
    if not tracker.enabled:
        return None
    tags: dict[str, Any] = {"personae.kind": "export", "personae.experiment": result.experiment,
                            "personae.run_dir": str(result.run_dir), "personae.export_dir": str(result.out)}
    source = _pipeline_run(tracker, str(result.run_dir))
    if source:
        tags["personae.source_run_id"] = source
    with tracker.run("export", tags=tags) as run:
        run.log_params({
            "export.redact": result.redacted,
            "export.exclude": ",".join(result.excluded.get("rules", [])) or "none",
            "export.run_dir": str(result.run_dir),
            "export.out": str(result.out),
        })
        metrics: dict[str, float] = {f"export.rows.{table}": n for table, n in result.counts.items()}
        for scan, kinds in result.scans.items():
            metrics[f"export.scan.{scan}"] = sum(kinds.values())
        for what, n in result.excluded.get("dropped", {}).items():
            if isinstance(n, (int, float)):
                metrics[f"export.dropped.{what}"] = n
        run.log_metrics(metrics)
        run.log_artifacts([result.out], artifact_path=EXPORT_ARTIFACT_PATH)
    return run.run_id


def _pipeline_run(tracker: Tracker, run_dir: str) -> str | None:
    """The latest pipeline run that wrote ``run_dir`` (tag ``personae.run_dir``), if any."""
    experiment_id = tracker.experiment_id(create=False)
    if experiment_id is None:
        return None
    runs = tracker.client().search_runs(
        [experiment_id], filter_string="tags.`personae.kind` = 'pipeline'", order_by=["attributes.start_time DESC"], max_results=50,
    )
    for found in runs:
        if found.data.tags.get("personae.run_dir") == run_dir:
            return found.info.run_id
    return None
