"""``personae simulate``: run a prebuilt graph over personas and a scenario, write conversations.jsonl."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from personae.errors import ConfigError

__all__ = ["register", "load_scenarios", "failure_summary"]


def failure_summary(failed: int, total: int, failed_before: int, where: Path, retry: str) -> str:
    """The line that ends a simulation with failed conversations: how many, where the errors are, how to retry."""
    earlier = f" ({failed_before} recorded by an earlier run)" if failed_before else ""
    return (f"[bold red]{failed} of {total} conversation(s) failed[/]{earlier}; each failed record in {where} "
            f"has its error. Fix the cause, then rerun with {retry} to try them again.")


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command to ``app``."""

    @app.command("simulate")
    def simulate(
        personas: Path = typer.Option(..., "--personas", help="personas.jsonl: one Persona per line"),
        scenario: Path = typer.Option(..., "--scenario", help="scenario YAML/JSON: one Scenario, or a list of them"),
        graph: str | None = typer.Option(None, "--graph", help="dyad | group | interview (default: the config's kind, else dyad)"),
        conversations: int = typer.Option(10, "--conversations", "-n", min=1, help="how many conversations"),
        out: Path | None = typer.Option(None, "--out", help="conversations.jsonl to append to (default: under the data dir's runs/)"),
        config: Path | None = typer.Option(None, "--config", help="graph YAML/JSON (GraphConfig: critic, termination, memory, …)"),
        seed: int = typer.Option(0, "--seed", help="seed for casting and model calls"),
        concurrency: int = typer.Option(64, "--concurrency", min=1, help="conversations in flight at once"),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="SQLite checkpoint file (default: the data dir's)"),
        no_checkpoint: bool = typer.Option(False, "--no-checkpoint", help="do not checkpoint (a killed run restarts its conversations)"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun conversations recorded as failed"),
        sessions: int = typer.Option(1, "--sessions", min=1, help="each of the -n groups meets this many times, in order"),
        gap: str = typer.Option("7 days", "--gap", help="simulated time between sessions, e.g. '7 days' (with --sessions > 1)"),
    ) -> None:
        """Simulate conversations; a rerun skips finished ones and resumes interrupted ones mid-conversation.

        Exit code: 0 when every conversation is complete; 1 when any is recorded as failed
        (in this run or, without --retry-failed, an earlier one): the last line says how many,
        and each failed record's "error" field says why; 2 for bad input or usage.
        """
        result, out_path = asyncio.run(
            _simulate(personas, scenario, graph, conversations, out, config, seed, concurrency, checkpoint, no_checkpoint, retry_failed,
                      sessions, gap)
        )
        if result.unfinished:
            Console(stderr=True).print(failure_summary(result.unfinished, result.total, result.failed_before, out_path, "--retry-failed"), soft_wrap=True)
            raise typer.Exit(1)


def load_scenarios(path: Path) -> list[Any]:
    """Scenarios from a YAML/JSON file holding one scenario mapping or a list of them."""
    from personae.models import Scenario
    from personae.validation import load_data_file, validate_data

    data = load_data_file(path)
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(item, dict) for item in items):
        raise ConfigError("expected a scenario mapping or a list of them", file=str(path), expected="mapping | list of mappings", got=type(data).__name__)
    return [validate_data(Scenario, item, file=path, what="scenario") for item in items]


async def _simulate(
    personas_path: Path,
    scenario_path: Path,
    kind: str | None,
    n: int,
    out: Path | None,
    config_path: Path | None,
    seed: int,
    concurrency: int,
    checkpoint: Path | None,
    no_checkpoint: bool,
    retry_failed: bool,
    sessions: int = 1,
    gap: str = "7 days",
) -> tuple[Any, Path]:
    """Run the batch; return its :class:`~personae.graphs.BatchResult` and the output file."""
    from personae.embeddings.factory import build_embedder
    from personae.graphs import GraphConfig, make_jobs, simulate_batch
    from personae.ids import content_hash
    from personae.jsonl import read_jsonl
    from personae.llm import build_gateway
    from personae.models import Persona
    from personae.paths import require_writable
    from personae.settings import Settings
    from personae.validation import load_data_file, validate_data

    console = Console(stderr=True)
    settings = Settings.load()
    people = read_jsonl(personas_path, Persona, unique="id")
    if not people:
        raise ConfigError("no personas in the file", file=str(personas_path), expected="at least one Persona per line")
    scenarios = load_scenarios(scenario_path)
    raw: dict[str, Any] = {}
    if config_path is not None:
        loaded = load_data_file(config_path)
        if not isinstance(loaded, dict):
            raise ConfigError("expected a mapping of graph settings", file=str(config_path), got=type(loaded).__name__)
        raw = dict(loaded)
    if kind is not None:
        if kind not in ("dyad", "group", "interview"):
            raise ConfigError("unknown graph", field="--graph", expected="dyad | group | interview", got=kind)
        raw["kind"] = kind
    graph = validate_data(GraphConfig, raw, file=config_path, what="graph config")
    plan = None
    if sessions > 1:
        from personae.graphs.sessions import Sessions

        plan = validate_data(Sessions, {"count": sessions, "gap": gap}, what="--sessions/--gap")
    jobs = make_jobs(people, scenarios, graph, n_conversations=n, seed=seed, sessions=plan)
    key = [seed, n, graph.model_dump(mode="json")] + ([plan.model_dump(mode="json")] if plan else [])
    out = out or settings.run_dir(f"simulate-{graph.kind}-{content_hash(key, length=8)}") / "conversations.jsonl"
    checkpoint_path = None if no_checkpoint else (checkpoint or settings.checkpoint_path)
    settings.check_data_dir()  # every output place, before a store is opened or a model called
    require_writable(out, kind="file", field="--out")
    if checkpoint_path is not None:
        require_writable(checkpoint_path, kind="file", field="--checkpoint")

    gateway = build_gateway(settings)
    embedder = build_embedder(settings, gateway=gateway)  # an endpoint's embeddings share its limits and usage
    handle = memory = None
    if graph.memory.enabled:
        from personae.memory import AgentMemory, open_qdrant

        handle = open_qdrant(settings)
        memory = AgentMemory(handle, embedder)
    if any(model.startswith("local:") for model in gateway.describe().values()):
        console.print("[yellow]Using the embedded SmolLM2-135M model: fine for trying things, not for research. "
                      "Set PERSONAE_LLM_BASE_URL / PERSONAE_LLM_MODEL for a real model.[/yellow]")
    try:
        with Progress(
            TextColumn(f"simulating {graph.kind}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        ) as progress:
            task = progress.add_task("conversations", total=len(jobs))
            result = await simulate_batch(
                jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoint_path, embedder=embedder, memory=memory,
                concurrency=concurrency, retry_failed=retry_failed, on_done=lambda _: progress.advance(task),
            )
            progress.update(task, completed=len(jobs))
    finally:
        await gateway.aclose()
        if handle is not None:
            handle.close()
    console.print(
        f"{result.completed} completed, {result.failed} failed, {result.skipped} already done "
        f"in {result.wall_s:.1f}s → {out}", soft_wrap=True,
    )
    return result, out
