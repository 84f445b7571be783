"""``personae chat EXPERIMENT --persona ID``: talk with one persona of a run.

The persona answers with the run's models, projection and window, and with its memory
when the run used memory (it remembers the run's conversations, and the chat is stored
in its memory too). The session is appended to the run's ``conversations.jsonl`` as a
conversation with ``metadata.kind == "chat"``, so ``personae evaluate`` reads it.
Interactive by default (``/exit`` or Ctrl-D ends it); ``--message`` (repeatable) runs it
from a script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from personae.errors import ConfigError, ModelCallError

__all__ = ["register", "find_persona", "run_folder"]

_EXIT = ("/exit", "/quit")


def register(app: typer.Typer) -> None:
    """Add the ``chat`` command to ``app``."""

    @app.command("chat")
    def chat(
        experiment: Path = typer.Argument(..., help="the experiment file of the run (its outputs are under the data dir's runs/NAME)"),
        persona: str = typer.Option(..., "--persona", help="id (or exact name) of a persona of the run's personas.jsonl"),
        message: list[str] = typer.Option([], "--message", "-m", help="say this, print the reply; repeat for several turns (no prompt)"),
        scenario: str | None = typer.Option(None, "--scenario", help="scenario name (default: the persona's scenario in the run, else the first)"),
        user_name: str = typer.Option("User", "--as", help="your name, as the persona sees it"),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="the data dir the run was written to (default: the settings')"),
    ) -> None:
        """Chat with a persona of a run, with its memory and the run's projection; the session is written to the run."""
        console = Console()
        if message:
            lines: Callable[[], str | None] = iter([*message, None]).__next__
        else:
            lines = _prompt(console)
        _chat(experiment, persona, lines, scenario, user_name, data_dir, console, echo=bool(message))


def _prompt(console: Console) -> Callable[[], str | None]:
    from rich.prompt import Prompt

    def ask() -> str | None:
        try:
            text = Prompt.ask("[bold]you[/]", console=console)
        except (EOFError, KeyboardInterrupt):
            console.print()
            return None
        return None if text.strip().lower() in _EXIT else text

    console.print("[dim]type /exit (or Ctrl-D) to end the chat[/]")
    return ask


def run_folder(experiment: Any, settings: Any) -> Path:
    """The run folder of ``experiment``, which must hold its personas; :class:`ConfigError` saying what was expected otherwise."""
    root = settings.run_dir(experiment.name)
    personas = root / "personas.jsonl"
    if not personas.is_file():
        what = "no run folder" if not root.is_dir() else "the run folder has no personas.jsonl"
        raise ConfigError(
            f"{what} for experiment {experiment.name!r}", file=str(root), field="experiment",
            expected=f"a run folder with personas.jsonl: run `personae run {experiment.source or 'EXPERIMENT.yaml'}` first "
            "(or pass the --data-dir it was run with)",
        )
    return root


def find_persona(personas: list, wanted: str):
    """The persona whose id (or exact name) is ``wanted``; :class:`ConfigError` listing a few valid ids otherwise."""
    for p in personas:
        if p.id == wanted:
            return p
    named = [p for p in personas if p.name.casefold() == wanted.casefold()]
    if len(named) == 1:
        return named[0]
    sample = ", ".join(f"{p.id} ({p.name})" for p in (named or personas)[:5])
    more = f" and {len(personas) - 5} more" if not named and len(personas) > 5 else ""
    reason = "several personas are called" if named else "no persona with id or name"
    raise ConfigError(f"{reason} {wanted!r} in the run", field="--persona", expected=f"one of {sample}{more}", got=wanted)


def _history(conversations: Path, persona_id: str) -> tuple[Any | None, int]:
    """The persona's first simulated conversation in the run (scenario and role), and how many chats it had."""
    from personae.jsonl import read_jsonl_dicts
    from personae.models import Conversation

    first, chats, seen = None, set(), set()
    if not conversations.is_file():
        return None, 0
    for _, record in read_jsonl_dicts(conversations):
        if not any((p.get("persona") or {}).get("id") == persona_id for p in record.get("participants") or []):
            continue
        meta = record.get("metadata") or {}
        if meta.get("kind") == "chat":
            chats.add(record.get("id"))
        elif first is None and record.get("id") not in seen:
            first = Conversation.model_validate(record)
        seen.add(record.get("id"))
    return first, len(chats)


def _chat(
    experiment_path: Path,
    persona_ref: str,
    next_line: Callable[[], str | None],
    scenario_name: str | None,
    user_name: str,
    data_dir: Path | None,
    console: Console,
    *,
    echo: bool = False,
) -> None:
    """The session. Prompts are read between event-loop runs (one per reply), so Ctrl-C at the prompt
    ends the chat at once; Ctrl-C during a reply ends it too. Either way what was said is written."""
    from personae.experiment import build_gateway_for, load_experiment, settings_for
    from personae.graphs.chat import ChatSession, chat_id, session_seed, user_participant
    from personae.jsonl import append_jsonl, read_jsonl
    from personae.models import Participant, Persona

    experiment = load_experiment(experiment_path)
    settings = settings_for(experiment, **({"data_dir": data_dir} if data_dir else {}))
    root = run_folder(experiment, settings)
    persona = find_persona(read_jsonl(root / "personas.jsonl", Persona, unique="id"), persona_ref)
    conversations = root / "conversations.jsonl"
    earlier, sessions = _history(conversations, persona.id)
    scenario = _scenario(experiment, scenario_name, earlier)
    role = _role(earlier, persona.id, scenario)
    seat = Participant(persona=persona, role=role)
    user = user_participant(scenario, role, user_name)
    cid = chat_id(experiment.name, persona.id, sessions + 1)

    with asyncio.Runner() as loop:
        gateway = build_gateway_for(experiment, settings)
        handle, failed = None, None
        try:
            memory = None
            if experiment.memory_enabled:
                from personae.embeddings import build_embedder
                from personae.memory import AgentMemory, open_qdrant

                handle = open_qdrant(settings)  # local Qdrant: one client per path and process, closed below
                memory = AgentMemory(handle, build_embedder(settings, gateway=gateway), collection=experiment.memory.collection)
            session = ChatSession(
                seat, user, scenario, experiment.graph, gateway=gateway, memory=memory, conversation_id=cid,
                seed=session_seed(experiment.seed, cid), metadata={"session": sessions + 1, "run": experiment.name},
            )
            loop.run(session.start())
            remembered = f", remembering {memory.count(persona.id)} memories" if memory is not None else ""
            console.print(f"[dim]chat {sessions + 1} with {escape(persona.name)} ({persona.id}), the {escape(role)} in "
                          f"{escape(scenario.name)}{remembered}[/]", soft_wrap=True)
            while (text := next_line()) is not None:
                if not text.strip():
                    continue
                if echo:  # scripted: show what was said, as the prompt would have
                    console.print(f"[bold]{escape(user_name)}:[/] {escape(text)}", soft_wrap=True)
                try:
                    reply = loop.run(session.send(text))
                except KeyboardInterrupt:
                    console.print("\n[dim]interrupted[/]")
                    break
                except ModelCallError as exc:  # the model is gone: keep what was said, then fail
                    failed = exc
                    break
                console.print(f"[bold cyan]{escape(persona.name)}:[/] {escape(reply.text)}", soft_wrap=True)
        finally:
            loop.run(gateway.aclose())
            if handle is not None:
                handle.close()
    if session.utterances:
        append_jsonl(conversations, [session.conversation()])
        console.print(f"[dim]session {cid} written to {conversations}[/]", soft_wrap=True)
    else:
        console.print("[dim]nothing said; nothing written[/]")
    if failed is not None:
        Console(stderr=True).print(f"[bold red]the chat stopped:[/] {escape(str(failed))}", soft_wrap=True)
        raise typer.Exit(1)


def _scenario(experiment: Any, name: str | None, earlier: Any):
    if name is not None:
        for s in experiment.scenarios:
            if s.name == name:
                return s
        raise ConfigError("no such scenario in the experiment", field="--scenario", expected=f"one of {[s.name for s in experiment.scenarios]}", got=name)
    if earlier is not None:
        return earlier.scenario
    return experiment.scenarios[0]


def _role(earlier: Any, persona_id: str, scenario: Any) -> str:
    if earlier is not None and earlier.scenario.id == scenario.id:
        for p in earlier.participants:
            if p.persona.id == persona_id:
                return p.role
    return scenario.roles[0].name
