"""``personae chat``: a scripted session with a persona of a run, against the test server over real
HTTP, with the run's memory; the session lands in the run's conversations and evaluation reads it."""

from __future__ import annotations

import asyncio

import pytest
from _flows_support import fake_experiment, run_cli

from personae.errors import ConfigError

KETTLE = "Hello again. Do you remember the broken kettle?"
FOLLOW_UP = "And what did the shop promise you?"


def _experiment(tmp_path, server, *, memory: bool = True, name: str = "chat-run"):
    models = {"default": {"provider": "openai", "model": "personae-test-chat", "base_url": server.base_url}}
    graph = {"kind": "dyad", "critic": {"enabled": False}, "termination": {"detector": False},
             "memory": {"enabled": memory, "reflect": False, "k": 4}}
    return fake_experiment(tmp_path, name=name, generate=False, n_conversations=4, max_turns=4,
                           extra={"models": models, "graph": graph, "memory": {"enabled": memory}})


def _simulate(exp_path, data_dir):
    """The run: personas written as the generate stage writes them, then the simulate stage's own shard code."""
    from personae.experiment import load_experiment, settings_for
    from personae.flows.simulate import _simulate_shard
    from personae.llm import Limits
    from personae.graphs import make_jobs
    from personae.jsonl import read_jsonl, write_jsonl
    from personae.models import Persona

    exp = load_experiment(exp_path)
    settings = settings_for(exp, data_dir=data_dir)
    root = settings.run_dir(exp.name)
    root.mkdir(parents=True)
    personas = read_jsonl(exp.personas_file, Persona, unique="id")
    write_jsonl(root / "personas.jsonl", personas)
    jobs = make_jobs(personas, exp.scenarios, exp.graph, n_conversations=exp.simulation.n_conversations, seed=exp.seed)
    # a shard of this process (limits given): not a Dask shard, which would lease Prefect's global
    # limits when an earlier test left a Prefect server configured
    result = asyncio.run(_simulate_shard(exp, {"data_dir": str(data_dir)}, jobs, 0, 1, limits=Limits()))
    assert result.metrics["conversations.completed_new"] == len(jobs)
    return exp, settings, root, personas


@pytest.mark.timeout(600)
def test_a_scripted_chat_uses_the_persona_memory_and_is_written_to_the_run(tmp_path, openai_server, monkeypatch):
    from personae.graphs import latest_conversations
    from personae.graphs.chat import chat_id
    from personae.memory import AgentMemory, open_qdrant
    from personae.embeddings import build_embedder

    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    exp_path = _experiment(tmp_path, openai_server)
    exp, settings, root, personas = _simulate(exp_path, data_dir)
    ana = personas[0]
    simulated = [c for c in latest_conversations(root / "conversations.jsonl") if any(p.persona.id == ana.id for p in c.participants)]
    role = next(p.role for p in simulated[0].participants if p.persona.id == ana.id)
    openai_server.reset_counts()

    result = run_cli(["chat", str(exp_path), "--persona", ana.id, "-m", KETTLE, "-m", FOLLOW_UP, "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"{ana.name}:" in result.output and KETTLE in result.output

    # what the persona's model received over HTTP: its own system prompt, then the chat, then memories of the run
    # (after the transcript, so the system prompt and transcript stay a cacheable prefix)
    bodies = [b for b in openai_server.requests if "messages" in b]
    assert len(bodies) == 2
    system = bodies[0]["messages"][0]["content"]
    assert system.startswith(f"You are {ana.name}") and "What you remember" not in system
    last = bodies[0]["messages"][-1]["content"]
    assert last.startswith(KETTLE) and 'in "refund"' in last.split("What you remember", 1)[1]  # memories written by the run's conversations
    assert bodies[1]["messages"][-1]["role"] == "user" and bodies[1]["messages"][-1]["content"].startswith(FOLLOW_UP)
    assert [m["role"] for m in bodies[1]["messages"]] == ["system", "user", "assistant", "user"]

    # the session, appended to the run's conversations
    chats = [c for c in latest_conversations(root / "conversations.jsonl") if c.metadata.get("kind") == "chat"]
    assert len(chats) == 1
    chat = chats[0]
    assert chat.id == chat_id(exp.name, ana.id, 1) and chat.status.value == "complete"
    assert [u.text for u in chat.utterances[::2]] == [KETTLE, FOLLOW_UP]
    persona_turns = chat.utterances[1::2]
    assert {u.speaker for u in persona_turns} == {ana.id} and all(u.metadata["memories"] > 0 for u in persona_turns)
    assert chat.participant(ana.id).role == role and chat.participant("user").role != role
    assert chat.metadata["session"] == 1 and chat.metadata["memory"] is True

    # the persona remembers the chat (the qdrant client above is closed: local mode allows one per path)
    with open_qdrant(settings) as handle:
        memory = AgentMemory(handle, build_embedder(settings), collection=exp.memory.collection)
        from_chat = [r for r in memory.export_records(ana.id) if r.conversation_id == chat.id]
        assert len(from_chat) == 4 and any(KETTLE in r.text for r in from_chat)
        assert not any(r.conversation_id == chat.id for r in memory.export_records(chat.participant("user").persona.id))

    # a second session gets the next stable id; evaluation reads the run with its chats
    again = run_cli(["chat", str(exp_path), "--persona", ana.name, "-m", "Hi once more.", "--data-dir", str(data_dir)])
    assert again.exit_code == 0, again.output
    ids = [c.id for c in latest_conversations(root / "conversations.jsonl") if c.metadata.get("kind") == "chat"]
    assert ids == [chat_id(exp.name, ana.id, 1), chat_id(exp.name, ana.id, 2)]
    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(data_dir))
    evaluated = run_cli(["evaluate", str(root), "--out", str(tmp_path / "eval")])
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "eval" / "scorecard.json").is_file()


def test_chat_errors_name_what_was_expected(tmp_path, openai_server, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    exp_path = _experiment(tmp_path, openai_server, memory=False, name="chat-errors")
    with pytest.raises(ConfigError, match="no run folder") as missing:
        run_cli(["chat", str(exp_path), "--persona", "x", "-m", "hi", "--data-dir", str(data_dir)])
    assert "personae run" in str(missing.value) and str(data_dir) in str(missing.value)

    from personae.experiment import load_experiment, settings_for
    from personae.jsonl import read_jsonl, write_jsonl
    from personae.models import Persona

    exp = load_experiment(exp_path)
    root = settings_for(exp, data_dir=data_dir).run_dir(exp.name)
    root.mkdir(parents=True)
    personas = read_jsonl(exp.personas_file, Persona)
    write_jsonl(root / "personas.jsonl", personas)
    with pytest.raises(ConfigError, match="no persona with id or name 'nobody'") as unknown:
        run_cli(["chat", str(exp_path), "--persona", "nobody", "-m", "hi", "--data-dir", str(data_dir)])
    assert unknown.value.field == "--persona" and all(p.id in str(unknown.value) for p in personas[:4])

    # without memory and without earlier conversations the chat still works; nothing is asked twice
    ok = run_cli(["chat", str(exp_path), "--persona", personas[1].id, "-m", "Good morning!", "--data-dir", str(data_dir)])
    assert ok.exit_code == 0, ok.output
    bodies = [b for b in openai_server.requests if "messages" in b]
    assert len(bodies) == 1 and "What you remember" not in bodies[0]["messages"][0]["content"]
    assert (root / "conversations.jsonl").is_file()


def test_an_interactive_chat_reads_stdin_until_exit(tmp_path, openai_server, monkeypatch):
    from typer.testing import CliRunner

    from personae.cli import app
    from personae.experiment import load_experiment, settings_for
    from personae.graphs import latest_conversations
    from personae.jsonl import read_jsonl, write_jsonl
    from personae.models import Persona

    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    exp_path = _experiment(tmp_path, openai_server, memory=False, name="chat-interactive")
    exp = load_experiment(exp_path)
    root = settings_for(exp, data_dir=data_dir).run_dir(exp.name)
    root.mkdir(parents=True)
    personas = read_jsonl(exp.personas_file, Persona)
    write_jsonl(root / "personas.jsonl", personas)
    result = CliRunner().invoke(app, ["chat", str(exp_path), "--persona", personas[2].id, "--data-dir", str(data_dir), "--as", "Sam"],
                                input="Hello there\n\nHow are you?\n/exit\nnever sent\n", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.count(f"{personas[2].name}:") == 2  # two replies; the line after /exit is never sent
    [chat] = latest_conversations(root / "conversations.jsonl")
    assert [u.text for u in chat.utterances[::2]] == ["Hello there", "How are you?"]
    assert chat.participant("user").persona.name == "Sam"
    assert len([b for b in openai_server.requests if "messages" in b]) == 2


def test_a_chat_whose_model_fails_keeps_what_was_said_and_exits_1(tmp_path, openai_server, monkeypatch):
    from personae.experiment import load_experiment, settings_for
    from personae.graphs import latest_conversations
    from personae.jsonl import read_jsonl, write_jsonl
    from personae.models import Persona

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONAE_LLM_MAX_RETRIES", "0")
    data_dir = tmp_path / "data"
    exp_path = _experiment(tmp_path, openai_server, memory=False, name="chat-fails")
    exp = load_experiment(exp_path)
    root = settings_for(exp, data_dir=data_dir).run_dir(exp.name)
    root.mkdir(parents=True)
    personas = read_jsonl(exp.personas_file, Persona)
    write_jsonl(root / "personas.jsonl", personas)
    openai_server.configure(fault_rate=1.0, faults=["500"])
    result = run_cli(["chat", str(exp_path), "--persona", personas[0].id, "-m", "Anyone there?", "-m", "Hello?", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    [chat] = latest_conversations(root / "conversations.jsonl")
    assert [u.text for u in chat.utterances] == ["Anyone there?"]  # the second message was never sent
