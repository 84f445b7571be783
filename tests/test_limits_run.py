"""The endpoint limiters' figures in a real `personae run`: MLflow stage and pipeline metrics and the summary."""

from __future__ import annotations

import pytest

from _flows_support import SECRET, fake_experiment, prefect_api_session, run_cli, secret_env  # noqa: F401
from personae.llm.limits import endpoint_identity, endpoint_label, key_fingerprint
from personae.settings import Settings
from personae.testing.server import OpenAITestServer, TestServerConfig
from personae.tracking import child_runs, pipeline_runs

pytestmark = pytest.mark.slow


def test_run_logs_429s_retries_and_waits_per_endpoint(tmp_path, secret_env, prefect_api_session):
    # a judge on the test server answers 429 (with Retry-After) to a share of requests; the critic
    # judges every draft, in two thread shards sharing one limiter per endpoint
    with OpenAITestServer(TestServerConfig(fault_rate=0.3, faults=["429"], retry_after_s=0.05, seed=5)) as server:
        exp = fake_experiment(tmp_path, judge_url=server.base_url, n_conversations=4, shards=2,
                              extra={"graph": {"kind": "dyad", "critic": {"judge": "always"}}})
        data_dir = tmp_path / "data"
        result = run_cli(["run", str(exp), "--data-dir", str(data_dir)])
        assert result.exit_code == 0, result.output
        faults = server.fault_counts.get("429", 0)
        chat_requests = server.endpoint_counts["chat.completions"]
        url = server.base_url
    assert faults > 0

    settings = Settings(data_dir=data_dir)
    (parent,) = pipeline_runs(settings, "flows-test")
    judge = "limits." + endpoint_label(endpoint_identity(url, key_fingerprint(SECRET)))
    stages = {c.name: c.metrics for c in child_runs(settings, "flows-test", parent.run_id)}
    # every request the server saw was admitted by the judge endpoint's limiter, counted once
    # although both shards reported it
    assert sum(m.get(f"{judge}.calls", 0) for m in stages.values()) == chat_requests
    assert sum(m.get(f"{judge}.throttled", 0) for m in stages.values()) == faults
    simulate = stages["simulate"]
    assert simulate[f"{judge}.retries"] == simulate[f"{judge}.throttled"] == simulate[f"{judge}.retry_after_waits"]
    assert simulate[f"{judge}.window_min"] <= simulate[f"{judge}.window"] <= simulate[f"{judge}.window_max"]
    assert simulate[f"{judge}.peak_in_flight"] >= 1 and simulate["limits.fake.calls"] > 0
    # the pipeline run adds them up over stages; the summary shows them
    metrics = parent.metrics
    assert metrics["limits.throttled"] == faults and metrics["limits.retries"] == faults
    assert metrics["simulate.limits.throttled"] == simulate[f"{judge}.throttled"]
    assert "rate limited (HTTP 429)" in result.output and "retries" in result.output
    assert not any(SECRET in key or SECRET[8:24] in key for key in metrics)
