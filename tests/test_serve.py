"""``personae serve``: with no Prefect API configured it starts a local server, serves the
experiment as a deployment on its interval schedule, and scheduled runs really complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from _flows_support import fake_experiment, personae_command, subprocess_env
from personae.experiment import load_experiment
from personae.flows.deploy import describe_schedule, prefect_schedule
from personae.flows.prefect_server import LocalPrefectServer, free_port
from personae.settings import Settings
from personae.tracking import pipeline_runs


def _post(url: str, body: dict) -> list | dict | None:
    """The JSON reply, or ``None`` when the server did not answer this time (it is polled again)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310 - loopback
            return json.loads(reply.read())
    except OSError:
        return None


def _healthy(api_url: str, timeout_s: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as reply:  # noqa: S310
            return reply.status == 200
    except OSError:
        return False


def test_schedules_map_to_prefect_schedules(tmp_path):
    exp = load_experiment(fake_experiment(tmp_path, extra={"schedule": {"interval_s": 90}}))
    schedule = prefect_schedule(exp.schedule)
    assert schedule.interval.total_seconds() == 90 and describe_schedule(exp.schedule) == "every 90s"
    cron = load_experiment(fake_experiment(tmp_path, extra={"schedule": {"cron": "0 3 * * *", "timezone": "UTC"}}))
    assert prefect_schedule(cron.schedule).cron == "0 3 * * *"
    assert prefect_schedule(None) is None


@pytest.mark.parametrize(
    ("schedule", "field", "message"),
    [
        ({"cron": "61 * * * *"}, "schedule.cron", "Invalid cron string"),
        ({"cron": "0 3 * *"}, "schedule.cron", "Invalid cron string"),
        ({"cron": "MON * * * *"}, "schedule.cron", "Invalid cron string"),  # a name in the minute field
        ({"cron": "*/0 * * * *"}, "schedule.cron", "Invalid cron string"),
        ({"cron": "H 3 * * *"}, "schedule.cron", "Invalid cron string"),  # the hashed syntax, which Prefect refuses
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}, "schedule.timezone", "Invalid timezone"),
        ({"interval_s": 60, "timezone": "Mars/Olympus_Mons"}, "schedule.timezone", "Invalid timezone"),
        ({"interval_s": 1e-9}, "schedule.interval_s", "greater than 0"),  # rounds to zero microseconds
        ({"interval_s": 1e300}, "schedule.interval_s", "too long"),
        ({"interval_s": float("inf")}, "schedule.interval_s", "too long"),
    ],
)
def test_a_schedule_prefect_would_refuse_is_refused_when_the_experiment_is_loaded(tmp_path, schedule, field, message):
    from personae.errors import ConfigError
    from personae.flows.context import open_context
    from personae.flows.deploy import check_schedule

    path = fake_experiment(tmp_path, extra={"schedule": schedule})
    with pytest.raises(ConfigError, match=message) as info:
        check_schedule(load_experiment(path))
    assert (info.value.file, info.value.field) == (str(path), field)
    with pytest.raises(ConfigError, match=message):  # every flow loads the experiment through open_context
        open_context(str(path), data_dir=str(tmp_path / "data"), track=False)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("cron", ["@daily", "0 0 * * MON-FRI", "5-10 * * * *", "0 0 L * *", "0 9 * * 1#2"])
def test_cron_strings_prefect_accepts_are_accepted(tmp_path, cron):
    from personae.flows.deploy import check_schedule

    check_schedule(load_experiment(fake_experiment(tmp_path, extra={"schedule": {"cron": cron, "timezone": "Europe/Paris"}})))


def test_serve_refuses_a_bad_schedule_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from personae.cli import app
    from personae.errors import ConfigError

    path = fake_experiment(tmp_path, extra={"schedule": {"cron": "0 25 * * *"}})
    result = CliRunner().invoke(app, ["serve", str(path), "--data-dir", str(tmp_path / "data"), "--no-ui"])
    assert isinstance(result.exception, ConfigError) and result.exception.field == "schedule.cron"
    assert not (tmp_path / "data").exists()


def test_a_second_local_server_on_the_same_database_is_refused(tmp_path):
    from personae.errors import StoreLockedError

    first = LocalPrefectServer(tmp_path / "home", port=0)
    first._lock()
    try:
        with pytest.raises(StoreLockedError, match="PREFECT_API_URL"):
            LocalPrefectServer(tmp_path / "home", port=0).start()
    finally:
        first.stop()


@pytest.mark.slow
@pytest.mark.timeout(900)  # a guard against a hang: two scheduled runs take minutes on a loaded machine
def test_serve_starts_a_local_server_and_scheduled_runs_complete(tmp_path):
    exp = fake_experiment(tmp_path, name="served", n_conversations=1, generate=False, max_turns=2,
                          extra={"schedule": {"interval_s": 10}})
    data_dir = tmp_path / "data"
    port = free_port(preferred=None)
    env = subprocess_env(PREFECT_HOME=str(tmp_path / "client-home"), PYTHONUNBUFFERED="1")
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        personae_command("serve", str(exp), "--data-dir", str(data_dir), "--port", str(port), "--limit", "1"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    api = f"http://127.0.0.1:{port}/api"
    try:
        completed: list = []
        # wait for two scheduled runs to finish, however long the machine takes (the test's timeout guards a hang)
        while len(completed) < 2:
            assert proc.poll() is None, "".join(lines)
            runs = _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}})
            if runs is not None:
                bad = [r for r in runs if r["state_type"] != "COMPLETED"]
                assert not bad, f"{bad[0]['state']}\n{''.join(lines)}"
                completed = [r for r in runs if r.get("deployment_id")]
            time.sleep(1)
        output = "".join(lines)
        assert "Started a local Prefect server" in output
        assert f"Prefect UI: http://127.0.0.1:{port}" in output
        assert "every 10s" in output
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(300)  # a guard against a hang, not a measure of speed
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert not _healthy(api, timeout_s=60), "serve must stop the server it started"
    assert (data_dir / "prefect" / "prefect.db").is_file()  # SQLite under the data dir
    runs = pipeline_runs(Settings(data_dir=data_dir), "served")
    assert len(runs) >= 2 and all(r.tags.get("prefect.flow_run_id") for r in runs)
