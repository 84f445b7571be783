"""``personae parse``: persona lines written by others become structured personas (only what each line states)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

PERSONAS_FILE = "personas.jsonl"
REPORT_FILE = "parse_report.json"


def register(app: typer.Typer) -> None:
    """Add the ``parse`` command to ``app``."""

    @app.command("parse")
    def parse(
        file: Path = typer.Argument(..., help="persona lines: .txt (one per line), .jsonl with a 'persona' field (Persona Hub), .py (PersonaGym's personas.py)"),
        out: Path = typer.Option(..., "--out", help="output folder: personas.jsonl and parse_report.json"),
        seed: int = typer.Option(0, "--seed", min=0, help="seed of the model calls"),
        config: Path | None = typer.Option(None, "--config", help="personae settings file (model endpoint, data dir, ...)"),
    ) -> None:
        """Parse each line into a persona holding only the fields the line states; unsupported values are dropped and counted."""
        asyncio.run(_parse(file, out, seed, config))


async def _parse(file: Path, out: Path, seed: int, config: Path | None) -> None:
    from personae.jsonl import write_json, write_jsonl
    from personae.llm import build_gateway
    from personae.paths import require_writable
    from personae.population.parse import parse_personas, read_persona_lines
    from personae.settings import Settings

    console = Console(stderr=True)
    settings = Settings.load(config)
    lines = read_persona_lines(file)  # a bad file fails here, before anything is written or called
    require_writable(out, kind="dir", field="--out")
    gateway = build_gateway(settings)
    described = gateway.describe()
    console.print(f"[cyan]model:[/] {', '.join(f'{k}={v}' for k, v in described.items())}")
    if any(v.startswith("local:") for v in described.values()):
        console.print("[yellow]using the tiny embedded local model: expect many dropped values (set PERSONAE_LLM_BASE_URL)[/]")
    try:
        result = await parse_personas(lines, gateway, seed=seed)
    finally:
        await gateway.aclose()
    write_jsonl(out / PERSONAS_FILE, result.personas)
    write_json(out / REPORT_FILE, result.report.model_dump(mode="json"))
    table = Table(title=f"parsed {file} → {out}")
    table.add_column("field")
    table.add_column("count")
    for label, value in result.report.summary_rows():
        table.add_row(label, value)
    Console().print(table)
