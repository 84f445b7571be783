"""``personae compare EXPERIMENT_NAME``: the latest pipeline runs of an experiment side by side (MLflow)."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personae.errors import ConfigError

__all__ = ["register", "select_metrics", "comparison_table", "plot_comparison", "DEFAULT_METRICS"]

DEFAULT_METRICS = (
    "generate.personas",
    "simulate.conversations.complete",
    "simulate.conversations.failed",
    "simulate.utterances.per_conversation",
    "usage.calls",
    "usage.model_calls",
    "usage.cached_calls",
    "usage.tokens",
    "usage.cost",
    "wall_s",
    "evaluate.eval.*",
)


def select_metrics(runs: Sequence, patterns: Sequence[str] | None) -> list[str]:
    """Metric names of ``runs`` matching ``patterns`` (globs like ``eval.*``), in pattern order."""
    names = sorted({name for run in runs for name in run.metrics})
    chosen: list[str] = []
    for pattern in patterns or DEFAULT_METRICS:
        for name in names:
            if fnmatch.fnmatchcase(name, pattern) and name not in chosen:
                chosen.append(name)
    return chosen


def _format(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.4g}"


def comparison_table(experiment: str, runs: Sequence, metrics: Sequence[str]) -> Table:
    """Metrics as rows, runs as columns (newest first)."""
    table = Table(title=f"{experiment}: {len(runs)} run(s)")
    table.add_column("metric", no_wrap=True)
    for run in runs:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.start_time / 1000)) if run.start_time else ""
        table.add_column(f"{run.run_id[:8]}\n{when}\n{run.status.lower()}", justify="right")
    for metric in metrics:
        table.add_row(metric, *[_format(run.metrics.get(metric)) for run in runs])
    return table


def plot_comparison(runs: Sequence, metrics: Sequence[str], out: Path, *, max_metrics: int = 12) -> Path:
    """A bar chart per metric (up to ``max_metrics``), one bar per run, written to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(metrics)[:max_metrics]
    if not shown:
        raise ConfigError("nothing to plot: no metric matched", field="--metric")
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    labels = [run.run_id[:8] for run in reversed(runs)]  # oldest → newest, left → right
    for ax, metric in zip(axes.flat, shown):
        values = [run.metrics.get(metric, float("nan")) for run in reversed(runs)]
        ax.bar(labels, values, color="#4C72B0")
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def register(app: typer.Typer) -> None:
    """Add ``personae compare`` to ``app``."""

    @app.command("compare")
    def compare(
        experiment: str = typer.Argument(..., help="Experiment name (the MLflow experiment)."),
        metric: list[str] = typer.Option(None, "--metric", "-m", help="Metric name or glob to show (repeatable), e.g. 'evaluate.eval.*'."),
        limit: int = typer.Option(10, "--limit", "-n", min=1, max=1000, help="How many of the latest runs."),
        plot: Path = typer.Option(None, "--plot", help="Also write a bar chart per metric to this PNG."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Data dir holding the MLflow store (overrides settings)."),
    ) -> None:
        """Compare the latest pipeline runs of an experiment, side by side."""
        from personae.paths import require_writable
        from personae.settings import Settings
        from personae.tracking import pipeline_runs

        settings = Settings.load(**({"data_dir": data_dir} if data_dir else {}))
        if plot is not None:
            require_writable(plot, kind="file", field="--plot")
        runs = pipeline_runs(settings, experiment, limit=limit)
        if not runs:
            raise ConfigError(f"no tracked runs of experiment {experiment!r}", field="EXPERIMENT_NAME", expected=f"an experiment run with `personae run` (tracking store: {settings.mlflow_tracking_uri})")
        metrics = select_metrics(runs, metric)
        if not metrics:
            raise ConfigError("no metric matched", field="--metric", expected="a name or glob among the runs' metrics", got=metric)
        Console(width=max(100, 24 + 14 * len(runs))).print(comparison_table(experiment, runs, metrics))
        if plot is not None:
            typer.echo(f"plot: {plot_comparison(runs, metrics, plot)}")
