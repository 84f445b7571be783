"""``personae evaluate``: score a conversations.jsonl on its own (no Prefect, no MLflow)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
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
        conversations: Path | None = typer.Argument(None, help="conversations.jsonl written by a simulation, or its run folder (optional with --judged --personas)"),
        personas: Path | None = typer.Option(None, "--personas", help=(
            "the population (default: the participants): personas.jsonl, or PersonaGym's one-line personas "
            "(.txt one per line, .json list of strings, or PersonaGym's personas.py as it is)")),
        out: Path | None = typer.Option(None, "--out", help="output folder (default: under the data dir's runs/)"),
        judged: bool = typer.Option(False, "--judged", help="also run the judged (PersonaGym-style) evaluation; costs model calls"),
        compare: Path | None = typer.Option(None, "--compare", help=(
            "another conversations.jsonl (or run folder) to compare with, metric by metric: e.g. an ablation with and without an intervention")),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON EvaluationConfig (judges, tasks, …)"),
        population_report: Path | None = typer.Option(None, "--population-report", help="population_report.json to include"),
        reference: Path | None = typer.Option(None, "--reference", help=(
            "a JSONL of human conversations (conversations.jsonl schema): score how human-like the run's text statistics "
            "are (turn length, diversity, questions, turn-taking, hedges, readability); overrides the config's reference")),
        validate: bool = typer.Option(False, "--validate", help=(
            "validate the transcript metrics on these conversations instead: inject known defects (echo, repetition, "
            "speaker swaps, drift, monopoly, off-scenario turns) at 5-40 % doses and report each metric's detection AUC")),
        questions: Path | None = typer.Option(None, "--questions", help=(
            "judged: external questions instead of generated ones (PersonaGym's questions/<benchmark>/ folder, "
            "or one file persona → task → questions)")),
        rubrics: Path | None = typer.Option(None, "--rubrics", help="judged: external rubrics (PersonaGym's rubrics/ folder of <Task>.txt, or YAML/JSON)"),
        judge_model: list[str] = typer.Option([], "--judge-model", help=(
            "judged: route a judge to its own model, ROLE=MODEL (or MODEL for the next judge); repeat per judge. MODEL is a "
            "model name at the configured endpoint, a .gguf file, or 'local'")),
    ) -> None:
        """Evaluate conversations and/or personas: transcript metrics, optionally judged scores and a comparison; write a scorecard."""
        if validate:
            if conversations is None:
                raise ConfigError("--validate needs conversations", field="conversations", expected="a conversations.jsonl")
            asyncio.run(_validate(conversations, personas, out))
            return
        asyncio.run(_evaluate(conversations, personas, out, judged, compare, config, population_report,
                              _JudgedInputs(questions=questions, rubrics=rubrics, judge_models=judge_model), reference))


@dataclass(frozen=True)
class _JudgedInputs:
    questions: Path | None
    rubrics: Path | None
    judge_models: list[str]


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
    conversations_path: Path | None,
    personas_path: Path | None,
    out: Path | None,
    judged: bool,
    compare_path: Path | None,
    config_path: Path | None,
    population_report_path: Path | None,
    judged_inputs: _JudgedInputs,
    reference_path: Path | None = None,
) -> None:
    from personae.embeddings.factory import build_embedder
    from personae.evaluation import EvaluationConfig, acompare_arms, evaluate_run
    from personae.evaluation.benchmark import load_personas
    from personae.evaluation.reference import load_reference
    from personae.ids import content_hash
    from personae.llm import build_gateway
    from personae.paths import require_writable
    from personae.settings import Settings
    from personae.validation import load_data_file, load_model_file

    console = Console()
    settings = Settings.load()
    config = load_model_file(config_path, EvaluationConfig, what="evaluation config") if config_path else EvaluationConfig()
    if judged:
        config = config.model_copy(update={"judged": config.judged.model_copy(update={"enabled": True})})
    config = _with_judged_inputs(config, judged_inputs)
    if reference_path is not None:
        config = config.model_copy(update={"reference": reference_path})
    if config.reference is not None:
        load_reference(config.reference)  # a bad reference fails before any work
    if conversations_path is None and not (config.judged.enabled and personas_path is not None):
        raise ConfigError("nothing to evaluate", field="conversations", expected="a conversations.jsonl, or --judged with --personas (a persona-only judged run)")
    if compare_path is not None and conversations_path is None:
        raise ConfigError("--compare needs conversations to compare with", field="--compare", expected="a conversations.jsonl as the first argument")
    conversations = _read_conversations(conversations_path) if conversations_path is not None else []
    personas = load_personas(personas_path) if personas_path else []
    source = conversations_path or personas_path
    other = _read_conversations(compare_path) if compare_path else None
    report = None
    if population_report_path is not None:
        report = load_data_file(population_report_path)
        if not isinstance(report, dict):
            raise ConfigError("expected a JSON object", file=str(population_report_path), got=type(report).__name__)
    out = out or settings.run_dir(f"evaluate-{source.stem}-{content_hash(str(source.resolve()), length=8)}")
    settings.check_data_dir()
    require_writable(out, kind="dir", field="--out")

    gateway = _judged_gateway(settings, config.judged.judges, judged_inputs.judge_models, build_gateway) if config.judged.enabled else None
    embedder = build_embedder(settings, gateway=gateway)
    comparison = None
    try:
        if other is not None:
            comparison = await acompare_arms(conversations, other, embedder=embedder, personas=personas, config=config,
                                             label_a=_label(conversations_path), label_b=_label(compare_path))
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
                title=f"personae scorecard: {source.name}",
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    finally:
        if gateway is not None:
            await gateway.aclose()
    console.print(scorecard.summary_table())
    for warning in scorecard.judged.warnings if scorecard.judged is not None else []:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if comparison is not None:
        console.print(comparison.table(metrics=[m for m in _HEADLINE_METRICS if any(r.metric == m for r in comparison.rows)]))
    console.print(f"scorecard: {Path(out) / 'scorecard.html'}")


def _with_judged_inputs(config, inputs: _JudgedInputs):
    """``config`` with the command line's --questions/--rubrics (which need --judged)."""
    update = {k: v for k, v in (("questions", inputs.questions), ("rubrics", inputs.rubrics)) if v is not None}
    if (update or inputs.judge_models) and not config.judged.enabled:
        flag = "--questions" if inputs.questions else "--rubrics" if inputs.rubrics else "--judge-model"
        raise ConfigError(f"{flag} applies to the judged evaluation", field=flag, expected="--judged as well")
    return config.model_copy(update={"judged": config.judged.model_copy(update=update)}) if update else config


def _judged_gateway(settings, judges: list[str], specs: list[str], build_gateway):
    """The gateway for the judged run: the settings' model, with judges routed to their own models by ``specs``."""
    routes: dict[str, str] = {}
    for spec in specs:
        role, sep, model = spec.partition("=")
        if not sep:
            role, model = next((j for j in judges if j not in routes), ""), spec
            if not role:
                raise ConfigError("more --judge-model values than judges", field="--judge-model", expected=f"at most {len(judges)}: {judges}", got=spec)
        role, model = role.strip(), model.strip()
        if role not in judges:
            raise ConfigError("--judge-model names a role that is not a judge", field="--judge-model", expected=f"one of {judges} (judged.judges)", got=role)
        if not model:
            raise ConfigError("--judge-model needs a model", field="--judge-model", expected="ROLE=MODEL", got=spec)
        routes[role] = model
    models = {f"judge-model-{i}": _judge_provider(settings, m) for i, m in enumerate(dict.fromkeys(routes.values()))}
    names = {m: f"judge-model-{i}" for i, m in enumerate(dict.fromkeys(routes.values()))}
    return build_gateway(settings, models=models or None, roles={role: names[m] for role, m in routes.items()})


def _judge_provider(settings, model: str):
    from personae.llm import build_provider

    if model.lower().endswith(".gguf"):
        from personae.llm.local import LocalLlamaLLM

        return LocalLlamaLLM(model)
    kind = settings.llm_provider or ("openai" if (settings.llm_base_url or settings.llm_api_key) else "local")
    if kind == "fake":
        from personae.llm.testing import FakeLLM

        return FakeLLM(model=model)
    if kind == "local" or model == "local":
        if model != "local":
            raise ConfigError("a judge model name needs an OpenAI-compatible endpoint", field="--judge-model",
                              expected="PERSONAE_LLM_BASE_URL set, a .gguf file, or 'local' (the embedded model)", got=model)
        return build_provider(settings, provider="local")
    return build_provider(settings, model=model)


def _conversations_file(path: Path) -> Path:
    """``path``, or the ``conversations.jsonl`` inside it when it is a run folder."""
    if path.is_dir():
        inside = path / "conversations.jsonl"
        if not inside.is_file():
            raise ConfigError("the run folder holds no conversations", file=str(path), expected="a conversations.jsonl in it (run the simulate stage first)")
        return inside
    return path


def _label(path: Path) -> str:
    """An arm's name in a comparison: the file's stem, or its run folder's name for a run's conversations.jsonl."""
    path = _conversations_file(path)
    return path.parent.name if path.stem == "conversations" else path.stem


def _read_conversations(path: Path) -> list:
    """The file's conversations, the latest record per id (a file rewritten by ``retry_failed`` holds stale failures).

    ``path`` may be a run folder: its ``conversations.jsonl`` is read."""
    from personae.graphs.runner import latest_conversations

    path = _conversations_file(path)
    conversations = latest_conversations(path)
    if not conversations:
        raise ConfigError("no conversations in the file", file=str(path), expected="one Conversation JSON object per line")
    return conversations
