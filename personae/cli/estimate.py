"""``personae estimate EXPERIMENT.yaml``: forecast a run's calls, tokens and cost from a small sample."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register", "forecast_table"]


def _fmt(estimate, money: bool = False) -> str:
    def one(x: float) -> str:
        return f"{x:,.4f}" if money else f"{x:,.0f}"

    if estimate.low is None or estimate.high is None:
        return one(estimate.value)
    return f"{one(estimate.value)} [{one(estimate.low)}–{one(estimate.high)}]"


def forecast_table(forecast, title: str) -> Table:
    """The forecast as a rich table: one row per stage and role, stage totals, the run's total."""
    table = Table(title=title, caption="[low–high]: 95 % interval from the per-unit spread of the sample (none from one unit)")
    for name, justify in (("stage", "left"), ("role", "left"), ("units (sampled)", "right"), ("calls", "right"),
                          ("prompt tokens", "right"), ("completion tokens", "right"), ("cost", "right")):
        table.add_column(name, justify=justify)
    for row in forecast.rows:
        total = row.role == "*"
        style = "bold" if total else None
        table.add_row(
            "total" if row.stage == "*" else row.stage, "all" if total else row.role,
            f"{row.units_total:,} ({row.units_sampled})", _fmt(row.calls), _fmt(row.prompt_tokens),
            _fmt(row.completion_tokens), _fmt(row.cost, money=True), style=style, end_section=total,
        )
    return table


def register(app: typer.Typer) -> None:
    """Add ``personae estimate`` to ``app``."""

    @app.command("estimate")
    def estimate(
        experiment: Path = typer.Argument(..., help="The experiment file (YAML)."),
        sample: int = typer.Option(4, "--sample", "-n", min=1, help="Units sampled per stage: personas generated, conversations, personas judged."),
        endpoint: str = typer.Option(None, "--endpoint", help="Run the sample on this OpenAI-compatible endpoint (every model of the experiment is sent there, no key)."),
        test_server: bool = typer.Option(False, "--test-server", help="Run the sample on an in-process test server (the default): no key, no cost."),
        experiment_models: bool = typer.Option(False, "--experiment-models", help="Run the sample on the experiment's own models (this pays for the sample once), through the response cache: a repeated estimate replays instead of paying again."),
        as_json: bool = typer.Option(False, "--json", help="Print the forecast as JSON instead of a table."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Settings' data dir (its cache serves --experiment-models)."),
    ) -> None:
        """Forecast a run's model calls, tokens and cost per stage and role, with an interval.

        Runs a few units of each stage (personas generated, conversations simulated, personas
        judged) unit by unit, measures each one's usage, and scales the mean to the full
        experiment: units × mean (+ the judges' fixed reliability checks), with a 95 %
        t-interval from the spread between units. Nothing is written to the experiment's
        outputs.

        Cost uses the price of the model serving each role: models.<name>.price
        (input_per_1m, output_per_1m) or its shorthand price_per_1k_tokens in the
        experiment, else the settings' prices table by model name. Cache hits cost nothing.

        By default the sample runs on an in-process test server, whose replies are not
        language: it measures the experiment's call pattern and prompt sizes, not a real
        model's reply lengths. For those, use --endpoint (e.g. a local server with the real
        model) or --experiment-models.
        """
        from personae.estimate import estimate_experiment
        from personae.experiment import check_inputs, load_experiment, settings_for

        chosen = [flag for flag, on in (("--endpoint", endpoint is not None), ("--test-server", test_server), ("--experiment-models", experiment_models)) if on]
        if len(chosen) > 1:
            raise typer.BadParameter(f"give one of --endpoint, --test-server, --experiment-models, not {' and '.join(chosen)}")
        source = "endpoint" if endpoint is not None else "experiment" if experiment_models else "test-server"
        loaded = load_experiment(experiment)
        check_inputs(loaded)
        settings = settings_for(loaded, **({"data_dir": str(data_dir)} if data_dir else {}))
        console = Console(stderr=True)
        if not as_json:
            console.print(f"sampling {sample} unit(s) per stage on {'the test server' if source == 'test-server' else endpoint or 'the experiment models'}…")
        forecast = estimate_experiment(loaded, settings, sample=sample, source=source, endpoint=endpoint)
        if as_json:
            typer.echo(json.dumps(forecast.model_dump(mode="json"), indent=2))
            return
        Console().print(forecast_table(forecast, f"personae estimate · {loaded.name} · sampled on {forecast.source}"))
        if forecast.unpriced:
            console.print(f"no price for model(s) {', '.join(forecast.unpriced)}: their cost counts as 0 "
                          "(set models.<name>.price or the settings' prices)", soft_wrap=True)
