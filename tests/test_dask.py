"""Simulation shards on Dask, proven: each shard's result names the Dask worker and the process
that ran it. Against this module's own Prefect server (its own PREFECT_HOME and SQLite database),
on a real ``distributed.LocalCluster`` (``simulation.dask: tcp://…``) and on the local cluster
the flow starts itself (``simulation.dask: true``)."""

from __future__ import annotations

import os

import pytest

from _flows_support import PREFECT_ENV, fake_experiment
from personae.flows.context import ShardProcess
from personae.jsonl import read_jsonl_dicts
from personae.settings import Settings

pytest.importorskip("prefect_dask")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_prefect_server(tmp_path_factory):
    """A ``prefect server start`` of this module alone, on a free port, stopped afterwards."""
    for key, value in PREFECT_ENV.items():
        os.environ.setdefault(key, value)
    from personae.flows.prefect_server import LocalPrefectServer

    home = tmp_path_factory.mktemp("dask-prefect")
    server = LocalPrefectServer(home / "server", ui=False, port=0, startup_timeout_s=600).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefect_api(own_prefect_server, monkeypatch):
    """This process, and the Dask workers it spawns (they inherit the environment), on the module's server."""
    from personae.flows.prefect_server import use_api_url

    from prefect.logging.handlers import APILogHandler

    monkeypatch.setenv("PREFECT_HOME", str(own_prefect_server.home.parent / "client"))
    with use_api_url(own_prefect_server.api_url):
        yield own_prefect_server
        APILogHandler().flush()  # send the runs' last logs while this server still listens


def _run(exp, data_dir=None):
    from personae.flows.pipeline import pipeline_flow

    return pipeline_flow(experiment=str(exp), stages=["generate", "simulate"], track=False, data_dir=data_dir and str(data_dir))


def _where_shards_ran(caplog) -> list[ShardProcess]:
    return sorted((r.shard_process for r in caplog.records if hasattr(r, "shard_process")), key=lambda p: p.shard)


def _complete_conversations(data_dir, n: int) -> list[dict]:
    """Every line of conversations.jsonl parses; ``n`` distinct conversations, all complete, none empty."""
    out = Settings(data_dir=data_dir).run_dir("flows-test") / "conversations.jsonl"
    records = [record for _, record in read_jsonl_dicts(out)]
    assert len(out.read_text().splitlines()) == len(records) == n, "one whole line per conversation, no torn or repeated line"
    assert len({c["id"] for c in records}) == n
    assert {c["status"] for c in records} == {"complete"}
    assert all(len(c["utterances"]) >= 2 for c in records)
    return records


def _calls_limit(endpoint_prefix: str):
    """The Prefect global limit of the endpoint's calls, read from the server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limits = [gcl for gcl in client.read_global_concurrency_limits(limit=200)
                  if gcl.name.startswith(endpoint_prefix) and gcl.name.endswith("-calls")]
    assert len(limits) == 1, [gcl.name for gcl in limits]
    return limits[0]


@pytest.mark.openai_server(latency_s=0.2, hold_until_in_flight=2, hold_s=30)
def test_shards_run_in_the_worker_processes_of_an_existing_cluster(tmp_path, prefect_api, openai_server, caplog, monkeypatch):
    from distributed import Client, LocalCluster

    caplog.set_level("INFO", logger="personae.flows.simulate")
    (tmp_path / "workers").mkdir()
    monkeypatch.chdir(tmp_path / "workers")  # the workers' working directory; the flow's data dir is elsewhere
    n = 6
    # one endpoint, 2 calls in flight at most; each shard alone would allow 2, so the two
    # worker processes together would reach 4 without the Prefect global limit they share
    model = {"provider": "openai", "model": "chat", "base_url": openai_server.base_url, "max_concurrency": 2}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        worker_pids = client.run(os.getpid)  # worker address → pid
        exp = fake_experiment(tmp_path, generate=False, extra={
            "models": {"default": model},
            "simulation": {"n_conversations": n, "shards": 2, "concurrency": 4, "dask": cluster.scheduler_address},
        })
        # the flow's data dir comes from a variable the workers, started before, never saw:
        # the flow hands them its run folder, so their shards write there, not under their own .personae
        monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
        result = _run(exp)
        assert set(client.run(os.getpid)) == set(worker_pids), "the cluster outlives the flow: it is not the flow's to close"

    where = _where_shards_ran(caplog)
    assert [p.shard for p in where] == [0, 1]
    for p in where:
        assert p.worker in worker_pids, f"shard {p.shard} ran outside the cluster's workers: {p}"
        assert p.pid == worker_pids[p.worker] and p.pid != os.getpid()
    assert result.metrics["simulate.shards.on_dask_workers"] == 2
    assert result.metrics["simulate.shards.processes"] == len({p.pid for p in where})

    _complete_conversations(tmp_path / "data", n)
    assert not (tmp_path / "workers" / ".personae").exists()
    # the two worker processes shared one budget of 2 calls in flight through the server's global limit
    assert openai_server.gate_opened and openai_server.peak_in_flight == 2
    limit = _calls_limit("personae-llm-127-0-0-1-")
    assert limit.limit == 2 and limit.active_slots == 0


def test_shards_run_in_the_worker_processes_of_the_local_cluster_the_flow_starts(tmp_path, prefect_api, caplog):
    caplog.set_level("INFO", logger="personae.flows.simulate")
    n = 4
    exp = fake_experiment(tmp_path, generate=False, extra={
        "simulation": {"n_conversations": n, "shards": 2, "concurrency": 2, "dask": True, "dask_workers": 2},
    })
    result = _run(exp, tmp_path / "data")

    where = _where_shards_ran(caplog)
    assert [p.shard for p in where] == [0, 1]
    for p in where:
        assert p.worker is not None and p.worker.startswith("tcp://127.0.0.1:"), p
        assert p.pid != os.getpid(), f"shard {p.shard} ran in the test's own process"
    assert result.metrics["simulate.shards.on_dask_workers"] == 2
    _complete_conversations(tmp_path / "data", n)
    limit = _calls_limit("personae-llm-fake-")
    assert limit.limit == Settings().llm_max_concurrency and limit.active_slots == 0


def test_a_shard_that_raises_gives_its_lease_back(tmp_path, prefect_api):
    """Shard 1 of 2 cannot open its checkpoint database (a directory stands at its path): it raises
    while it holds its lease on the endpoint's global limit; the run fails, and no slot stays taken."""
    exp = fake_experiment(tmp_path, generate=False, extra={
        "simulation": {"n_conversations": 4, "shards": 2, "concurrency": 2, "dask": True, "dask_workers": 2, "max_retries": 0},
    })
    blocker = Settings(data_dir=tmp_path / "data").run_dir("flows-test") / "checkpoints" / "shard-0000-of-0002.sqlite"
    blocker.mkdir(parents=True)
    with pytest.raises(Exception) as failed:
        _run(exp, tmp_path / "data")
    assert "unable to open database" in str(failed.value) or "directory" in str(failed.value), failed.value
    limit = _calls_limit("personae-llm-fake-")
    assert limit.limit == Settings().llm_max_concurrency and limit.active_slots == 0
