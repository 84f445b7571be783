"""`personae testserver`: every option of the test server's config is a flag with help, and the
flags reach the running server (quota mode and the simulated prompt cache, over real HTTP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import typer

from personae.cli import app
from personae.testing.server import TestServerConfig, config_from_options


def _flag(field: str) -> str:
    """The flag of a config field: ``quota_window_s`` → ``--quota-window``."""
    return "--" + field.removesuffix("_s").replace("_", "-")


def test_every_server_option_is_a_flag_with_help():
    command = typer.main.get_command(app).commands["testserver"]
    options = {opt: param for param in command.params for opt in param.opts}
    for field in TestServerConfig.model_fields:
        assert _flag(field) in options, f"{field} has no flag {_flag(field)}"
        assert len(options[_flag(field)].help or "") > 20, f"{_flag(field)} has no helpful --help text"


def test_flags_map_to_the_config():
    config = config_from_options(simulate_prompt_cache=True, hold_until_in_flight=3, hold=2.5, hang=4.0, quota_window=1.0, quota_rpm=60)
    assert (config.simulate_prompt_cache, config.hold_until_in_flight, config.hold_s, config.hang_s) == (True, 3, 2.5, 4.0)
    assert (config.quota_rpm, config.quota_window_s) == (60, 1.0)


def test_cli_server_simulates_the_prompt_cache_and_the_quota_over_http():
    command = [str(Path(sys.executable).parent / "personae"), "testserver", "--port", "0", "--simulate-prompt-cache", "--quota-rpm", "600"]
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_gateway's Ctrl-C test
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    finally:
        signal.signal(signal.SIGINT, inherited)
    with proc:
        try:
            url = proc.stdout.readline().strip()
            system = {"role": "system", "content": "You are Ana, a night-shift nurse in Madrid. " * 20}
            first = [system, {"role": "user", "content": "Hello there."}]
            second = [*first, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How was the shift?"}]
            with httpx.Client(base_url=url, timeout=60) as client:
                replies = [client.post("/chat/completions", json={"model": "m", "messages": m}) for m in (first, second)]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)  # a guard against a hang, not a measure of speed
    assert [r.status_code for r in replies] == [200, 200], proc.stderr.read() if proc.stderr else ""
    usage = [r.json()["usage"] for r in replies]
    assert usage[0]["prompt_tokens_details"]["cached_tokens"] == 0
    assert 0 < usage[1]["prompt_tokens_details"]["cached_tokens"] < usage[1]["prompt_tokens"]
    assert replies[1].headers["x-ratelimit-limit-requests"] == "600"  # the default 60 s window: the quota per minute
    assert int(replies[1].headers["x-ratelimit-remaining-requests"]) in (598, 599)  # 599 if the bucket refilled one between


def test_embedding_format_flags_reach_the_config():
    config = config_from_options(embedding_formats="float", embedding_ignore_format=True)
    assert config.embedding_formats == ["float"] and config.embedding_ignore_format
    assert config_from_options().embedding_formats == ["float", "base64"]
