"""``personae survey``: field an experiment's survey, write the answer table and the realism report."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``survey`` command to ``app``."""

    @app.command("survey")
    def survey(
        experiment: Path = typer.Argument(..., help="experiment YAML with a survey: section"),
        mode: str | None = typer.Option(None, "--mode", help="direct | two_pass (default: the experiment's)"),
        targets: Path | None = typer.Option(None, "--targets", help="human targets file (overrides survey.targets)"),
        respondents: int | None = typer.Option(None, "--respondents", "-n", min=1, help="survey only the first N personas (overrides survey.respondents)"),
        no_calibration: bool = typer.Option(False, "--no-calibration", help="raw figures only: no reweighted or mapped columns"),
        data_dir: str | None = typer.Option(None, "--data-dir", help="override the data dir"),
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
    ) -> None:
        """Survey the experiment's population with its instrument; a rerun skips finished respondents.

        Writes, under the run folder's survey/<mode>/: answers.parquet and answers.csv (one row per
        respondent, question and option), realism.json/.csv, scorecard.html and plots. With targets,
        post-hoc calibration is reported beside the raw distances, never instead: reweighted (raked
        to the targets' marginals) and mapped (learned on a seeded train split of the questions,
        shown on the others). Exit code 1
        when any respondent failed (recorded in survey_conversations.jsonl with its error).
        """
        from personae.errors import ConfigError
        from personae.flows.survey import run_survey_experiment

        if mode is not None and mode not in ("direct", "two_pass"):
            raise ConfigError("unknown elicitation mode", field="--mode", expected="direct or two_pass", got=mode)
        outcome = asyncio.run(run_survey_experiment(experiment, data_dir=data_dir, track=not no_track, mode=mode, targets=targets, respondents=respondents,
                                                          calibrate=False if no_calibration else None))
        report, result = outcome.report, outcome.result
        console = Console()
        table = Table(title=f"survey {report.instrument} ({report.mode})")
        calibration = report.calibration or {}
        split = calibration.get("split") or {}
        part = {qid: name for name in ("train", "validation", "test") for qid in split.get(name, [])}
        columns = ["question", "answered/asked", "distance", "variance ratio", "midpoint", "refusal"]
        if calibration:
            columns += ["reweighted*", "mapped*", "split"]
        for column in columns:
            table.add_column(column)
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        for q in report.questions:
            row = [q.id, f"{q.n_answered}/{q.n_asked}", fmt(q.distance), fmt(q.variance_ratio), fmt(q.midpoint_rate), fmt(q.refusal_rate)]
            if calibration:
                row += [fmt(q.reweighted_distance), fmt(q.mapped_distance), part.get(q.id, "")]
            table.add_row(*row)
        console.print(table)
        console.print(f"representativeness {fmt(report.representativeness)}; {report.profiles.n_distinct} distinct answer profiles of {report.profiles.n_respondents}")
        if calibration:
            metrics = report.metrics("m")
            console.print("* post-hoc calibration, beside the raw figures (not instead): mean distance raw "
                          f"{fmt(report.mean_distance)}, reweighted {fmt(metrics.get('m.mean_distance_reweighted'))}; "
                          f"on the questions outside the train split raw {fmt(metrics.get('m.mean_distance_mapped_raw'))}, "
                          f"mapped {fmt(metrics.get('m.mean_distance_mapped'))}")
            for note in [*calibration.get("notes", []), *((calibration.get("reweighted") or {}).get("warnings") or [])]:
                console.print(f"  {note}")
        for warning in report.warnings:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"answers: {result.table['parquet']} (+ .csv); report: {outcome.files.get('scorecard_html')}")
        if result.batch.unfinished:
            Console(stderr=True).print(f"[bold red]{result.batch.unfinished} of {result.respondents} respondent(s) failed[/]; see {result.conversations}")
            raise typer.Exit(1)
