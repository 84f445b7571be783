"""``personae run EXPERIMENT.yaml``: the whole pipeline (or some stages) as a Prefect flow, tracked in MLflow."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["register", "prepare_prefect_env", "RichProgressSink", "BUDGET_EXIT_CODE"]

BUDGET_EXIT_CODE = 3
"""Exit code of a run the experiment's budget stopped: not a failure (1) nor bad input (2)."""

_HEADLINE = (
    ("generate.personas", "personas"),
    ("simulate.conversations.complete", "conversations complete"),
    ("simulate.conversations.failed", "conversations failed"),
    ("simulate.conversations.new", "conversations simulated now"),
    ("simulate.utterances.per_conversation", "turns per conversation"),
    ("usage.calls", "model calls (incl. cached)"),
    ("usage.model_calls", "calls that reached a model"),
    ("usage.cached_calls", "calls served from the cache"),
    ("usage.tokens", "tokens"),
    ("usage.embeddings.calls", "embeddings requests"),
    ("usage.embeddings.tokens", "embeddings tokens"),
    ("usage.cost", "cost estimate (chat and embeddings)"),
    ("limits.throttled", "rate limited (HTTP 429)"),
    ("limits.retries", "retries"),
    ("limits.slot_wait_s", "waited for a slot (s, summed over calls)"),
    ("limits.rate_wait_s", "waited for rate limits (s, summed over calls)"),
    ("budget.tokens", "budget: tokens spent"),
    ("budget.cost", "budget: cost spent"),
    ("wall_s", "wall time (s)"),
)


def prepare_prefect_env(*, verbose: bool = False) -> None:
    """Defaults for Prefect in a CLI process, set before Prefect is imported (user values win):
    no analytics, a start-up timeout that suits slow machines, and quiet logs under the progress bar."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        for name in ("mlflow", "distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)


class RichProgressSink:
    """Receives the flows' progress events and draws one bar per stage:
    done/total, calls, tokens, elapsed time and ETA."""

    def __init__(self, progress: Progress) -> None:
        from personae.flows.progress import ProgressTotals

        self.progress = progress
        self._totals = ProgressTotals()
        self._tasks: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        with self._lock:
            stage = self._totals.add(event)
            task = self._tasks.get(stage.stage)
            if task is None:
                task = self._tasks[stage.stage] = self.progress.add_task(stage.stage, total=None, calls=0, tokens=0)
            self.progress.update(
                task, completed=stage.done, total=stage.total or None, calls=stage.calls, tokens=stage.tokens,
            )


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[calls]} calls"),
        TextColumn("{task.fields[tokens]} tokens"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _summary(result, console: Console) -> None:
    from personae.tracking import scrub_params

    table = Table(title=f"personae run · {result.experiment}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, label in _HEADLINE:
        if key in result.metrics:
            value = result.metrics[key]
            table.add_row(label, f"{value:,.3f}" if key in ("usage.cost", "budget.cost", "wall_s") or not float(value).is_integer() else f"{int(value):,}")
    console.print(table)
    console.print(f"outputs: {result.run_dir}", soft_wrap=True)
    scorecard = Path(result.run_dir) / "scorecard.html"
    if scorecard.is_file():
        console.print(f"scorecard: {scorecard}", soft_wrap=True)
    if result.mlflow_run_id:
        uri = scrub_params({"uri": result.tracking_uri})["uri"]
        console.print(f"MLflow run {result.mlflow_run_id} in {uri}\n  browse: mlflow ui --backend-store-uri {uri}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``personae run`` to ``app``."""

    @app.command("run")
    def run(
        experiment: Path = typer.Argument(..., help="The experiment file (YAML)."),
        stage: list[str] = typer.Option(None, "--stage", "-s", help="Run only this stage (repeatable): generate | simulate | evaluate."),
        no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Where outputs, caches and stores go (overrides settings)."),
    ) -> None:
        """Run an experiment: generate → simulate → evaluate as a Prefect flow, tracked in MLflow.

        Reruns skip what is done, resume half-done conversations, and replay model
        calls from the cache. Without a Prefect server, Prefect starts a temporary one.

        Exit code: 0 when done; 1 when any conversation is recorded as failed (the last
        line says how many; rerun with simulation.retry_failed: true); 2 for bad input;
        3 when the experiment's budget stopped the run (what finished is written; rerun
        with a larger budget to resume).
        """
        from personae.experiment import check_inputs, load_experiment, settings_for

        prepare_prefect_env(verbose=logging.getLogger().level <= logging.DEBUG)
        loaded = load_experiment(experiment)  # fail on a bad file before starting anything
        check_inputs(loaded)
        from personae.flows.schedule import check_schedule

        check_schedule(loaded)
        from personae.flows.pipeline import check_stages, pipeline_flow

        stages = check_stages(stage)
        console = Console(stderr=True)
        settings = settings_for(loaded, **({"data_dir": str(data_dir)} if data_dir else {}))
        settings.check_data_dir()  # before Prefect, MLflow or any model call
        from personae.experiment import budget_meter

        budget_meter(loaded, settings)  # a money budget needs every model priced: fail before starting
        with _maybe_server(loaded, settings, console), _progress(console) as progress:
            result = pipeline_flow(
                experiment=str(loaded.source), stages=stages, track=not no_track,
                data_dir=str(data_dir) if data_dir else None, progress=RichProgressSink(progress),
            )
        _summary(result, Console())
        if result.budget_stop:
            console.print(
                f"stopped by the budget: {result.budget_stop}. What finished is written in {result.run_dir}; "
                "raise budget in the experiment and rerun to resume (finished work is skipped, the cache replays).",
                soft_wrap=True,
            )
            raise typer.Exit(BUDGET_EXIT_CODE)
        failed = int(result.metrics.get("simulate.conversations.failed", 0))
        if failed:
            from personae.cli.simulate import failure_summary

            total = int(result.metrics.get("simulate.conversations.total", failed))
            line = failure_summary(failed, total, 0, Path(result.run_dir) / "conversations.jsonl", "simulation.retry_failed: true in the experiment")
            console.print(line, soft_wrap=True)
            raise typer.Exit(1)


def _maybe_server(experiment, settings, console: Console):
    """A real Prefect server for Dask runs (workers report to it); otherwise Prefect's ephemeral API."""
    from contextlib import nullcontext

    if not experiment.simulation.dask:
        return nullcontext()
    from personae.flows.prefect_server import prefect_api

    return prefect_api(settings, ui=False, on_start=lambda s: console.print(f"started a local Prefect server at {s.url}"))
