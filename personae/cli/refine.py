"""``personae refine``: refine an experiment's population toward its survey's human targets (PEvo)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``refine`` command to ``app``."""

    @app.command("refine")
    def refine(
        experiment: Path = typer.Argument(..., help="experiment YAML with a survey: section that has targets"),
        attribute: list[str] = typer.Option(..., "--attribute", "-a", help="a taxonomy attribute revisions may change (repeatable)"),
        reviser: str = typer.Option("llm", "--reviser", help="llm (prompt survey_refine.j2 through the gateway) | mixture (deterministic, no model)"),
        max_rounds: int = typer.Option(5, "--max-rounds", min=1, help="budget: rounds of revision"),
        patience: int = typer.Option(1, "--patience", min=1, help="stop after this many rounds in a row without a validation improvement"),
        max_model_calls: int | None = typer.Option(None, "--max-model-calls", min=1, help="budget: stop once this many model calls were made"),
        min_improvement: float = typer.Option(0.0, "--min-improvement", min=0.0, help="keep a round only when validation distance drops by more"),
        split_seed: int | None = typer.Option(None, "--split-seed", help="seed of the train/validation/test split (default: the experiment's)"),
        mode: str | None = typer.Option(None, "--mode", help="direct | two_pass (default: the survey's)"),
        data_dir: str | None = typer.Option(None, "--data-dir", help="override the data dir"),
        no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
    ) -> None:
        """Revise personas on the train questions, keep a round only when validation improves, report the held-out test split.

        Splits the targeted questions into train/validation/test (seeded, in refine/split.json);
        revisions see only the train questions. Each round is an MLflow child run of the run
        'refine'. Writes under the run folder's refine/: round_NN/ surveys, refine.json,
        personas_refined.jsonl, calibration.json (test distances raw, reweighted, mapped).
        """
        from personae.errors import ConfigError
        from personae.flows.refine import run_refine_experiment

        if reviser not in ("llm", "mixture"):
            raise ConfigError("unknown reviser", field="--reviser", expected="llm or mixture", got=reviser)
        if mode is not None and mode not in ("direct", "two_pass"):
            raise ConfigError("unknown elicitation mode", field="--mode", expected="direct or two_pass", got=mode)
        outcome = asyncio.run(run_refine_experiment(
            experiment, attributes=attribute, data_dir=data_dir, track=not no_track, reviser=reviser, max_rounds=max_rounds,  # type: ignore[arg-type]
            patience=patience, max_model_calls=max_model_calls, min_improvement=min_improvement, split_seed=split_seed, mode=mode,
        ))
        result = outcome.result
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        console = Console()
        rounds = Table(title="refinement rounds")
        for column in ("round", "train", "validation", "kept", "revised"):
            rounds.add_column(column)
        for r in result.rounds:
            rounds.add_row(str(r.round), fmt(r.train_distance), fmt(r.validation_distance), "yes" if r.kept else "no", str(r.revised_personas))
        console.print(rounds)
        console.print(f"stopped: {result.stop_reason}; best round {result.best_round}")
        console.print(f"held-out test distance: {fmt(result.test_before)} → {fmt(result.test_after)} (reduction {fmt(result.test_reduction)})")
        if outcome.calibrated is not None:
            table = Table(title="test questions: raw and calibrated distances")
            for column in ("question", "raw", "reweighted", "mapped"):
                table.add_column(column)
            for row in outcome.calibrated.distances():
                table.add_row(row["question"], fmt(row["raw"]), fmt(row["reweighted"]), fmt(row["mapped"]))
            console.print(table)
        console.print(f"refined personas: {result.out_dir / 'personas_refined.jsonl'}")
