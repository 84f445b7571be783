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
        "with PERSONAE_LLM_BASE_URL / PERSONAE_LLM_MODEL (any OpenAI-compatible server)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Commands, in the order --help lists them.
_COMMAND_MODULES = ("run", "generate", "simulate", "evaluate", "compare", "serve", "doctor", "testserver")


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
    """Entry point: run the CLI, turning personae errors into one readable message and exit 2."""
    try:
        app(standalone_mode=False)
    except PersonaeError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.secho("aborted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
