"""The installed ``personae`` script, run as a user runs it: exit codes and usage errors.

Typer's test runner calls the app object and reads its exit code directly, so it cannot
see what the console script (``sys.exit(main())``) does with it. These tests start the
script that the install put next to the interpreter, in a subprocess, with this checkout
first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent


def personae_script() -> str:
    """The installed ``personae`` console script of the interpreter running the tests."""
    beside = Path(sys.executable).with_name("personae")
    found = str(beside) if beside.is_file() else shutil.which("personae")
    assert found, "the personae console script is not installed (pip install -e .)"
    return found


def run_script(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``personae ARGS`` in ``cwd`` with a clean personae environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PERSONAE_", "OPENAI_"))}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    base.update({"PERSONAE_DATA_DIR": str(cwd / "data"), "COLUMNS": "200", **env})
    return subprocess.run([personae_script(), *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=150)


USAGE_ERRORS = [
    ("no-arguments", [], "Usage: personae"),
    ("unknown-option", ["--bogus"], "No such option"),
    ("missing-option", ["simulate"], "Missing option '--personas'"),
    ("unknown-command", ["frob"], "No such command 'frob'"),
    ("negative-count", ["simulate", "--personas", "p.jsonl", "--scenario", "s.yaml", "--conversations", "-5"], "--conversations"),
]


@pytest.mark.parametrize(("argv", "says"), [case[1:] for case in USAGE_ERRORS], ids=[case[0] for case in USAGE_ERRORS])
def test_usage_errors_show_usage_and_exit_2_without_a_traceback(tmp_path, argv, says):
    done = run_script(argv, tmp_path)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 2, output
    assert "Usage: personae" in output or "personae --help" in output or "personae simulate --help" in output, output
    assert says in output, output
    assert not (tmp_path / "data").exists()


def test_a_failed_doctor_check_ends_the_script_with_exit_1(tmp_path):
    (tmp_path / "a-file").write_text("not a directory\n")
    done = run_script(["doctor", "--skip-model"], tmp_path, PERSONAE_DATA_DIR=str(tmp_path / "a-file" / "data"),
                      PERSONAE_EMBEDDINGS_PROVIDER="hashing")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "check(s) failed" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_passing_doctor_ends_the_script_with_exit_0(tmp_path):
    done = run_script(["doctor", "--skip-model"], tmp_path, PERSONAE_EMBEDDINGS_PROVIDER="hashing", PERSONAE_LLM_PROVIDER="fake")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout


PERSONAS = '{"name": "Ana Ruiz", "age": 34, "occupation": "nurse"}\n{"name": "Ben Okafor", "age": 51, "occupation": "plumber"}\n'
SCENARIO = "name: refund\nroles: [{name: client, goal: get a refund}, {name: responder, goal: help}]\nmax_turns: 4\n"


def test_simulate_exits_1_naming_how_many_failed_until_a_retry_completes_them(tmp_path):
    import json
    import socket

    (tmp_path / "personas.jsonl").write_text(PERSONAS)
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    with socket.socket() as sock:  # a port nothing listens on: every model call is refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    argv = ["simulate", "--personas", "personas.jsonl", "--scenario", "scenario.yaml", "-n", "3", "--out", "conversations.jsonl"]
    refused = {"PERSONAE_LLM_BASE_URL": url, "PERSONAE_LLM_MODEL": "m", "PERSONAE_LLM_MAX_RETRIES": "0", "PERSONAE_EMBEDDINGS_PROVIDER": "hashing"}
    first = run_script(argv, tmp_path, **refused)
    assert first.returncode == 1, first.stderr
    assert "3 of 3 conversation(s) failed" in first.stderr and "--retry-failed" in first.stderr and "conversations.jsonl" in first.stderr
    records = [json.loads(line) for line in (tmp_path / "conversations.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed"] * 3
    assert all(f"endpoint unreachable: connection refused at {url}" in r["error"] for r in records)

    working = {"PERSONAE_LLM_PROVIDER": "fake", "PERSONAE_EMBEDDINGS_PROVIDER": "hashing"}
    skipped = run_script(argv, tmp_path, **working)  # without --retry-failed the failures stay: still not done
    assert skipped.returncode == 1 and "(3 recorded by an earlier run)" in skipped.stderr, skipped.stderr
    retried = run_script([*argv, "--retry-failed"], tmp_path, **working)
    assert retried.returncode == 0, retried.stderr
    assert "failed;" not in retried.stderr and "3 completed, 0 failed" in retried.stderr


def test_help_documents_the_model_timeout_and_the_exit_codes(tmp_path):
    root = run_script(["--help"], tmp_path)
    assert root.returncode == 0
    assert "PERSONAE_LLM_TIMEOUT_S" in root.stdout and "Exit codes" in root.stdout
    simulate = run_script(["simulate", "--help"], tmp_path)
    assert simulate.returncode == 0 and "--retry-failed" in simulate.stdout and "Exit code" in simulate.stdout
