"""``personae evaluate``: score a conversations.jsonl on its own (no Prefect, no MLflow)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from personae.errors import ConfigError

__all__ = ["register"]

_HEADLINE_METRICS = (
    "echo_rate", "repetition_rate", "role_confusion", "echo", "echo_excess", "dominance", "drift_drop", "self_drift", "scenario_sim",
    "authorship_accuracy", "adherence_rr", "persona_sim", "top_share", "gini", "distinct_1", "distinct_2", "words_mean", "n_utterances",
)


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to ``app``."""

    @app.command("evaluate")
    def evaluate(
        conversations: Path = typer.Argument(..., help="conversations.jsonl written by a simulation"),
        personas: Path | None = typer.Option(None, "--personas", help="personas.jsonl: the population (default: the participants)"),
        out: Path | None = typer.Option(None, "--out", help="output folder (default: under the data dir's runs/)"),
        judged: bool = typer.Option(False, "--judged", help="also run the judged (PersonaGym-style) evaluation; costs model calls"),
        compare: Path | None = typer.Option(None, "--compare", help="another conversations.jsonl to compare with, metric by metric"),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON EvaluationConfig (judges, tasks, …)"),
        population_report: Path | None = typer.Option(None, "--population-report", help="population_report.json to include"),
        reference: Path | None = typer.Option(None, "--reference", help=(
            "a JSONL of human conversations (conversations.jsonl schema): score how human-like the run's text statistics "
            "are (turn length, diversity, questions, turn-taking, hedges, readability); overrides the config's reference")),
        validate: bool = typer.Option(False, "--validate", help=(
            "validate the transcript metrics on these conversations instead: inject known defects (echo, repetition, "
            "speaker swaps, drift, monopoly, off-scenario turns) at 5-40 % doses and report each metric's detection AUC")),
    ) -> None:
        """Evaluate conversations: transcript metrics, optionally judged scores and a comparison; write a scorecard."""
        if validate:
            asyncio.run(_validate(conversations, personas, out))
            return
        asyncio.run(_evaluate(conversations, personas, out, judged, compare, config, population_report, reference))


async def _validate(conversations_path: Path, personas_path: Path | None, out: Path | None) -> None:
    from personae.embeddings.factory import build_embedder
    from personae.evaluation.validation import validate_metrics
    from personae.paths import require_writable
    from personae.ids import content_hash
    from personae.jsonl import read_jsonl
    from personae.models import Persona
    from personae.settings import Settings

    console = Console()
    settings = Settings.load()
    conversations = _read_conversations(conversations_path)
    personas = read_jsonl(personas_path, Persona) if personas_path else []
    out = out or settings.run_dir(f"validate-{conversations_path.stem}-{content_hash(str(conversations_path.resolve()), length=8)}")
    require_writable(out, kind="dir", field="--out")
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("measuring the clean run")
        report = await validate_metrics(conversations, embedder=build_embedder(settings), personas=personas,
                                        on_progress=lambda step: progress.update(task, description=f"injecting {step}"))
    console.print(report.table())
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "validation.json").write_text(report.to_json(), encoding="utf-8")
    console.print(f"passing: {', '.join(report.passing()) or 'none'}\nreport: {Path(out) / 'validation.json'}")


async def _evaluate(
    conversations_path: Path,
    personas_path: Path | None,
    out: Path | None,
    judged: bool,
    compare_path: Path | None,
    config_path: Path | None,
    population_report_path: Path | None,
    reference_path: Path | None = None,
) -> None:
    from personae.embeddings.factory import build_embedder
    from personae.evaluation import EvaluationConfig, acompare_arms, evaluate_run
    from personae.evaluation.reference import load_reference
    from personae.ids import content_hash
    from personae.jsonl import read_jsonl
    from personae.llm import build_gateway
    from personae.models import Persona
    from personae.paths import require_writable
    from personae.settings import Settings
    from personae.validation import load_data_file, load_model_file

    console = Console()
    settings = Settings.load()
    config = load_model_file(config_path, EvaluationConfig, what="evaluation config") if config_path else EvaluationConfig()
    if judged:
        config = config.model_copy(update={"judged": config.judged.model_copy(update={"enabled": True})})
    if reference_path is not None:
        config = config.model_copy(update={"reference": reference_path})
    if config.reference is not None:
        load_reference(config.reference)  # a bad reference fails before any work
    conversations = _read_conversations(conversations_path)
    personas = read_jsonl(personas_path, Persona, unique="id") if personas_path else []
    other = _read_conversations(compare_path) if compare_path else None
    report = None
    if population_report_path is not None:
        report = load_data_file(population_report_path)
        if not isinstance(report, dict):
            raise ConfigError("expected a JSON object", file=str(population_report_path), got=type(report).__name__)
    out = out or settings.run_dir(f"evaluate-{conversations_path.stem}-{content_hash(str(conversations_path.resolve()), length=8)}")
    settings.check_data_dir()
    require_writable(out, kind="dir", field="--out")

    embedder = build_embedder(settings)
    comparison = None
    if other is not None:
        comparison = await acompare_arms(conversations, other, embedder=embedder, personas=personas, config=config,
                                         label_a=conversations_path.stem, label_b=compare_path.stem)
    gateway = build_gateway(settings) if config.judged.enabled else None
    try:
        with Progress(TextColumn("judged evaluation"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, disable=not config.judged.enabled, transient=True) as progress:
            task = progress.add_task("personas", total=None)
            scorecard = await evaluate_run(
                conversations,
                personas,
                config=config,
                gateway=gateway,
                embedder=embedder,
                out_dir=out,
                population_report=report,
                comparison=comparison,
                title=f"personae scorecard: {conversations_path.name}",
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        if gateway is not None:
            await gateway.aclose()
    console.print(scorecard.summary_table())
    if comparison is not None:
        console.print(comparison.table(metrics=[m for m in _HEADLINE_METRICS if any(r.metric == m for r in comparison.rows)]))
    console.print(f"scorecard: {Path(out) / 'scorecard.html'}")


def _read_conversations(path: Path) -> list:
    """The file's conversations, the latest record per id (a file rewritten by ``retry_failed`` holds stale failures)."""
    from personae.graphs.runner import latest_conversations

    conversations = latest_conversations(path)
    if not conversations:
        raise ConfigError("no conversations in the file", file=str(path), expected="one Conversation JSON object per line")
    return conversations
