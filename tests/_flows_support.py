"""Shared helpers for the flows/tracking/serve tests: a real local Prefect server for the
session, experiment files on the fake model, and running the CLI in-process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

SECRET = "sk-personae-test-secret-0123456789"
PERSONAS = [
    {"name": "Ana Ruiz", "age": 34, "occupation": "nurse", "location": "Madrid", "description": "A practical night-shift nurse."},
    {"name": "Ben Okafor", "age": 51, "occupation": "plumber", "location": "Leeds", "description": "Blunt, funny, hates waiting."},
    {"name": "Chen Wei", "age": 27, "occupation": "data analyst", "location": "Toronto", "description": "Precise and polite."},
    {"name": "Dina Haddad", "age": 45, "occupation": "teacher", "location": "Lyon", "description": "Patient, asks many questions."},
]
SCENARIO = {
    "name": "refund",
    "setting": "An online shop's support chat.",
    "roles": [{"name": "client", "goal": "get a refund for a broken kettle"}, {"name": "responder", "goal": "help within policy"}],
    "max_turns": 4,
}

PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",  # a hang guard: start-up is slow on a loaded machine
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def fake_experiment(
    tmp_path: Path,
    *,
    name: str = "flows-test",
    n_conversations: int = 3,
    shards: int = 1,
    judge_url: str | None = None,
    generate: bool = True,
    latency_s: float = 0.0,
    max_turns: int = 4,
    extra: dict | None = None,
) -> Path:
    """An experiment file on the fake model (hashing embeddings): a generated population of
    4 (or a personas file), one support scenario, a dyad graph."""
    models: dict = {"default": {"provider": "fake", "latency_s": latency_s} if latency_s else {"provider": "fake"}}
    roles: dict = {}
    if judge_url:
        models["judge"] = {
            "provider": "openai", "model": "judge-model", "base_url": judge_url,
            "api_key_env": "PERSONAE_TEST_JUDGE_KEY", "price_per_1k_tokens": 1.5,
        }
        roles["critic"] = "judge"
    data: dict = {
        "name": name,
        "seed": 7,
        "models": models,
        "roles": roles,
        "embeddings": {"provider": "hashing"},
        "scenarios": [{**SCENARIO, "max_turns": max_turns}],
        "graph": {"kind": "dyad"},
        "simulation": {"n_conversations": n_conversations, "shards": shards, "concurrency": 8},
    }
    if generate:
        data["population"] = {"size": 4, "seed": 3}
    else:
        personas = tmp_path / "personas.jsonl"
        personas.write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
        data["personas_file"] = "personas.jsonl"
    data.update(extra or {})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str]):
    """``personae ARGS`` in-process (typer's runner)."""
    from typer.testing import CliRunner

    from personae.cli import app

    return CliRunner().invoke(app, args, catch_exceptions=False)


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a ``personae`` subprocess: this one, Prefect quiet, the repo importable."""
    env = {**os.environ, **PREFECT_ENV, **extra}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def personae_command(*args: str) -> list[str]:
    """The ``personae`` CLI as a subprocess command line."""
    return [sys.executable, "-c", "from personae.cli import main; main()", *args]


@pytest.fixture
def secret_env(monkeypatch):
    """A judge key in its env var, and the same secret as the settings' default key."""
    monkeypatch.setenv("PERSONAE_TEST_JUDGE_KEY", SECRET)
    monkeypatch.setenv("PERSONAE_LLM_API_KEY", SECRET)
    return SECRET


_SESSION: dict = {"server": None, "users": 0}


@pytest.fixture(scope="session")
def prefect_api_session(tmp_path_factory):
    """A real local Prefect server (SQLite in a temp PREFECT_HOME) that in-process flows and
    subprocesses use for the whole session (PREFECT_API_URL). Test modules importing this
    fixture share one server."""
    for key, value in PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    from personae.flows.prefect_server import LocalPrefectServer, use_api_url

    if _SESSION["server"] is None:
        home = tmp_path_factory.mktemp("prefect-home")
        os.environ["PREFECT_HOME"] = str(home)
        _SESSION["server"] = LocalPrefectServer(home / "server", ui=False, port=0, startup_timeout_s=600).start()
    server = _SESSION["server"]
    _SESSION["users"] += 1
    try:
        with use_api_url(server.api_url):
            yield server
    finally:
        _SESSION["users"] -= 1
        if _SESSION["users"] == 0:
            server.stop()
            _SESSION["server"] = None
