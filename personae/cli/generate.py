"""``personae generate``: build a population from a spec into an output folder (resumable)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command to ``app``."""

    @app.command("generate")
    def generate(
        spec: Path = typer.Option(..., "--spec", help="population spec YAML/JSON (size, seed, quotas, rules, ...)"),
        out: Path = typer.Option(..., "--out", help="output folder: personas.jsonl, rejects.jsonl, population_report.json, plot"),
        size: int | None = typer.Option(None, "--size", help="override the spec's size"),
        seed: int | None = typer.Option(None, "--seed", help="override the spec's seed"),
        no_llm: bool = typer.Option(False, "--no-llm", help="skip the LLM plausibility check and crafting (sample + rules + dedup only)"),
        config: Path | None = typer.Option(None, "--config", help="personae settings file (model endpoint, data dir, ...)"),
    ) -> None:
        """Generate personas; rerunning with the same spec and folder resumes where it stopped."""
        asyncio.run(_generate(spec, out, size, seed, no_llm, config))


async def _generate(spec_path: Path, out: Path, size: int | None, seed: int | None, no_llm: bool, config: Path | None) -> None:
    from personae.embeddings.factory import build_embedder
    from personae.llm import build_gateway
    from personae.memory.qdrant import open_qdrant
    from personae.population import generate_population, load_population_spec, plan_population
    from personae.paths import require_writable
    from personae.settings import Settings

    console = Console(stderr=True)
    settings = Settings.load(config)
    spec = load_population_spec(spec_path, size=size, seed=seed)
    plan_population(spec)  # a bad taxonomy, rule or quota fails here, before any store is opened
    settings.check_data_dir()
    require_writable(out, kind="dir", field="--out")
    gateway = None if no_llm or not (spec.llm_validate or spec.craft) else build_gateway(settings)
    embedder = build_embedder(settings, gateway=gateway) if spec.dedup else None
    if gateway is not None:
        described = ", ".join(f"{k}={v}" for k, v in gateway.describe().items())
        console.print(f"[cyan]model:[/] {described}")
        if any(v.startswith("local:") for v in gateway.describe().values()):
            console.print("[yellow]using the tiny embedded local model: fine for trying things, not for research (set PERSONAE_LLM_BASE_URL)[/]")
    qdrant = open_qdrant(settings) if embedder is not None else None
    try:
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console
        ) as progress:
            task = progress.add_task(f"generating {spec.name}", total=spec.size)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = await generate_population(spec, gateway=gateway, embedder=embedder, qdrant=qdrant, out_dir=out, on_progress=on_progress)
    finally:
        if qdrant is not None:
            qdrant.close()
        if gateway is not None:
            await gateway.aclose()
    table = Table(title=f"population {report.name} → {out}")
    table.add_column("metric")
    table.add_column("value")
    for label, value in report.summary_rows():
        table.add_row(label, value)
    Console().print(table)
