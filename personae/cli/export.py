"""``personae export RUN --out DIR``: a run as a dataset folder for the Hugging Face Hub, scanned first."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from personae.errors import ConfigError

__all__ = ["register", "parse_exclude"]


def parse_exclude(values: list[str]) -> list[str]:
    """``--exclude failed,flagged`` (or repeated) as a list of rules; an unknown one raises :class:`ConfigError`."""
    from personae.export import EXCLUDE_RULES

    rules = [part.strip() for value in values for part in value.split(",") if part.strip()]
    unknown = sorted(set(rules) - set(EXCLUDE_RULES))
    if unknown:
        raise ConfigError("unknown exclusion", field="--exclude", expected="failed, flagged or failed,flagged", got=",".join(unknown))
    return list(dict.fromkeys(rules))


def register(app: typer.Typer) -> None:
    """Add the ``export`` command to ``app``."""

    @app.command("export")
    def export(
        run: str = typer.Argument(..., metavar="RUN", help="A run's output folder, or its experiment's name (a folder under the data dir's runs/)."),
        out: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Where to write the dataset folder (new or empty; see --force)."),
        redact: bool = typer.Option(False, "--redact", help="Mask what the PII scan found ([EMAIL], [PHONE], [URL], [CARD], [CREDENTIAL])."),
        exclude: list[str] = typer.Option([], "--exclude", metavar="RULE[,RULE]", help=(
            "Drop records: 'failed' (failed conversations), 'flagged' (conversations and personas any scan flagged), "
            "or 'failed,flagged'. The card and the report count what was dropped.")),
        force: bool = typer.Option(False, "--force", help="Replace an existing folder at --out."),
        track: bool = typer.Option(True, "--track/--no-track", help="Log the export to MLflow as an artifact of an 'export' run."),
        data_dir: Path = typer.Option(None, "--data-dir", help="Data dir holding the runs and the MLflow store (overrides settings)."),
    ) -> None:
        """Export a run as a dataset folder: Parquet + JSONL tables, a dataset card, SHA256SUMS.

        Before writing, it scans every text for PII-like strings (emails, phone numbers, URLs,
        Luhn-valid card numbers, credentials), AI-identity leakage ("as an AI language model"),
        prompt leakage (long runs of a system prompt's words) and critic and metric failures,
        and writes the findings to scan_report.json. The folder loads offline with
        datasets.load_dataset("parquet", data_files=...) and can be pushed to the Hub as it is.
        """
        from personae.export import ExportOptions, export_run, resolve_run
        from personae.settings import Settings

        settings = Settings.load(**({"data_dir": data_dir} if data_dir else {}))
        options = ExportOptions(redact=redact, exclude=parse_exclude(exclude), force=force)
        run_dir = resolve_run(run, settings.runs_dir)
        if track:
            settings.check_data_dir()  # the MLflow store: a place it cannot be written fails before any work
        console = Console(stderr=True)
        with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as progress:
            task = progress.add_task("conversations", total=None)
            result = export_run(run_dir, out, options, on_progress=lambda done, total: progress.update(task, completed=done, total=total))
        mlflow_run = None
        if track:
            from personae.tracking_export import log_export

            mlflow_run = log_export(settings, result)
        _print_summary(Console(), result, mlflow_run)


def _print_summary(console: Console, result, mlflow_run: str | None) -> None:
    table = Table(title=f"export of {result.run_dir}", show_header=True)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in result.counts.items():
        table.add_row(name, str(n))
    console.print(table)
    found = {scan: sum(kinds.values()) for scan, kinds in result.scans.items()}
    console.print("scans: " + ", ".join(f"{scan} {n}" for scan, n in found.items())
                  + (" (PII masked)" if result.redacted else ""), soft_wrap=True)
    dropped = result.excluded.get("dropped", {})
    if result.excluded.get("rules"):
        console.print(f"dropped: {dropped.get('conversations', 0)} conversation(s) {dropped.get('conversations_by_rule', {})}, "
                      f"{dropped.get('utterances', 0)} utterance(s), {dropped.get('personas', 0)} persona(s)", soft_wrap=True)
    console.print(f"dataset: {result.out}  (card: README.md, findings: scan_report.json)", soft_wrap=True)
    if mlflow_run:
        console.print(f"MLflow run: {mlflow_run} (artifact path 'export')", soft_wrap=True)
