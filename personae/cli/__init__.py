"""The ``personae`` command line. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from personae.errors import PersonaeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="personae",
    help=(
        "Persona-driven multi-agent simulation: generate synthetic populations, simulate "
        "conversations as LangGraph state machines, evaluate persona fidelity, and run it all "
        "as tracked, scheduled experiments.\n\n"
        "With no model endpoint configured, personae runs on a tiny embedded local model "
        "(SmolLM2-135M): fine for trying things, not for research. Point it at a real model "
        "with PERSONAE_LLM_BASE_URL / PERSONAE_LLM_MODEL (any OpenAI-compatible server); "
        "PERSONAE_LLM_TIMEOUT_S (default 60) bounds each call to it, PERSONAE_LLM_MAX_RETRIES (default 5) "
        "how often a failed call is retried. `personae doctor` checks the set-up.\n\n"
        "Exit codes: 0 done; 1 ran, but something failed (a conversation, a doctor check); "
        "2 bad input or usage (one error line, nothing written)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Commands, in the order --help lists them.
_COMMAND_MODULES = ("run", "generate", "simulate", "evaluate", "export", "chat", "compare", "serve", "doctor", "testserver")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register_commands() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"personae.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"personae.cli.{name}":
                continue
            raise
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point of the ``personae`` script; it always ends the process with an exit code.

    0: done. 1: the command ran but something failed (a ``doctor`` check, a failed
    conversation). 2: a usage error (typer prints the usage and the problem) or bad input
    (one ``error:`` line naming the file and field, nothing written). 130: interrupted.

    Typer runs in standalone mode, so it handles its own usage errors and exit codes,
    whichever click it is built on (recent typer releases bundle their own, which a check against
    the separate ``click`` package misses).
    """
    try:
        app()
    except PersonaeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("aborted", err=True)
        sys.exit(130)
