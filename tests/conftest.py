"""Shared fixtures. Any network access beyond loopback fails the test."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "PERSONAE_LLM_BASE_URL", "PERSONAE_LLM_API_KEY", "PERSONAE_CONFIG"):
    os.environ.pop(_var, None)

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _check_address(address) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if host not in ("localhost",):
                raise ConnectionRefusedError(f"tests may not reach the network (tried {host})")
            return
        if not ip.is_loopback:
            raise ConnectionRefusedError(f"tests may not reach the network (tried {host})")


def _guarded_connect(self, address):
    _check_address(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(address)
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Settings rooted in a fresh temp data dir."""
    from personae.settings import Settings

    monkeypatch.chdir(tmp_path)
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def fake_gateway():
    """A gateway over the deterministic FakeLLM, no cache."""
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM

    return Gateway(FakeLLM(seed=0))


@pytest.fixture
def hashing_embedder():
    """The deterministic hashing embedder (a fake)."""
    from personae.embeddings import HashingEmbedder

    return HashingEmbedder(dim=256)


@pytest.fixture
def cli_env(monkeypatch, settings):
    """The ``personae`` typer app, on the fake model and the hashing embedder, in a temp data dir without a cache."""
    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    monkeypatch.setenv("PERSONAE_LLM_PROVIDER", "fake")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PERSONAE_CACHE_ENABLED", "false")
    from personae.cli import app

    return app
