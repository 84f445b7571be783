"""``personae serve EXPERIMENT.yaml [...]``: experiments as scheduled Prefect deployments.

With ``PREFECT_API_URL`` set (or a Prefect profile pointing at a server) the
deployments go to that server. Otherwise personae starts a local
``prefect server start`` (SQLite under the data dir), says where its UI is, and
stops it when serving ends.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personae.errors import ConfigError

__all__ = ["register"]


def _sigterm_as_interrupt() -> None:
    """Let SIGTERM end serving like Ctrl-C, so the local server is stopped cleanly."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, handler)


def register(app: typer.Typer) -> None:
    """Add ``personae serve`` to ``app``."""

    @app.command("serve")
    def serve(
        experiments: list[Path] = typer.Argument(..., help="Experiment files (YAML) to serve."),
        no_track: bool = typer.Option(False, "--no-track", help="Scheduled runs do not log to MLflow."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Where outputs, caches, stores and the local Prefect server go."),
        port: int = typer.Option(4200, "--port", help="Port of the local Prefect server (when personae starts one)."),
        ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Prefect UI on the local server."),
        limit: int = typer.Option(None, "--limit", min=1, help="Most flow runs at once (default: Prefect's)."),
    ) -> None:
        """Serve experiments as Prefect deployments on their cron/interval schedules (Ctrl-C stops)."""
        from personae.cli.run import prepare_prefect_env
        from personae.experiment import load_experiment, settings_for
        from personae.settings import Settings

        prepare_prefect_env(verbose=logging.getLogger().level <= logging.DEBUG)
        loaded = [load_experiment(path) for path in experiments]
        from personae.flows.schedule import check_schedule

        for experiment in loaded:  # before any server starts
            check_schedule(experiment)
        names = [e.name for e in loaded]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError("experiment names must be distinct to serve them together", field="name", got=dupes)

        from prefect import serve as prefect_serve

        from personae.flows.deploy import deployment_for, describe_schedule
        from personae.flows.prefect_server import prefect_api

        console = Console()
        settings = Settings.load(**({"data_dir": data_dir} if data_dir else {}))
        settings.check_data_dir()
        for experiment in loaded:
            settings_for(experiment, settings, **({"data_dir": data_dir} if data_dir else {})).check_data_dir()
        _sigterm_as_interrupt()

        def started(server) -> None:
            console.print(f"Started a local Prefect server (SQLite in {server.home}).")
            if server.ui:
                console.print(f"Prefect UI: [bold]{server.url}[/bold]")

        try:
            with prefect_api(settings, ui=ui, port=port, on_start=started) as (api_url, server):
                if server is None:
                    console.print(f"Using the Prefect server at {api_url}")
                deployments = [
                    deployment_for(e, track=not no_track, data_dir=str(data_dir) if data_dir else None) for e in loaded
                ]
                table = Table(title="personae deployments")
                for column in ("experiment", "schedule", "file"):
                    table.add_column(column)
                for experiment in loaded:
                    table.add_row(experiment.name, describe_schedule(experiment.schedule), str(experiment.source))
                console.print(table)
                console.print(f"Serving {len(deployments)} deployment(s) against {api_url} (PREFECT_API_URL); Ctrl-C stops.", highlight=False)
                prefect_serve(*deployments, print_starting_message=False, limit=limit)
        except KeyboardInterrupt:
            pass
        console.print("Stopped serving.")
