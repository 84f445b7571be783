"""Reliability under model faults: a batch over a flaky endpoint loses and duplicates nothing.

The local OpenAI-compatible test server injects 429 (with ``Retry-After``), 500,
timeouts, malformed bodies, truncated and schema-invalid JSON; the batch runs through
the real ``openai`` client (``OpenAICompatibleLLM``) behind the gateway. Every
conversation must end ``complete`` or ``failed`` with its reason, each id exactly
once; retries must wait at least ``Retry-After``; a dead endpoint must stop the run
with a clear message after a bounded number of requests instead of spinning.

Nothing here depends on the machine's speed: an injected timeout hangs until the client
gives up, and a normal reply comes at once, far inside the client's timeout.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from personae.errors import ModelCallError, PersonaeError
from personae.graphs.config import GraphConfig
from personae.graphs.runner import ConversationJob, latest_conversations, make_jobs, simulate_batch
from personae.llm import Gateway
from personae.llm.base import LLMRequest, LLMResponse
from personae.llm.wrappers import WrapperLLM
from personae.models import Persona, Role, Scenario
from personae.testing.pytest_plugin import openai_llm
from personae.testing.server import ALL_FAULTS, OpenAITestServer, TestServerConfig

pytestmark = pytest.mark.timeout(600)  # a guard against a hang: injected timeouts each wait out the 10 s client timeout

N_CONVERSATIONS = 200
RETRY_AFTER_S = 0.2
# an injected 'timeout' hangs far longer (HANG_S) than the client waits; a normal reply comes at
# once, and this is long enough that it never reaches the client timeout on a loaded machine
CLIENT_TIMEOUT_S = 10.0
HANG_S = 120.0
TRANSPORT_FAULTS = ["429", "500", "timeout", "malformed"]
# what a failed conversation's recorded reason looks like, one pattern per transport fault
REASONS = {
    "429": re.compile(r"HTTP 429"),
    "500": re.compile(r"HTTP 500"),
    "timeout": re.compile(r"timed out"),
    "malformed": re.compile(r"malformed response body"),
}


@dataclass
class _Attempt:
    request: int
    started: float
    ended: float
    status: int | None = None
    retry_after: float | None = None
    timed_out: bool = False


class AttemptLog(WrapperLLM):
    """Records every attempt the retry layer makes (it wraps the provider, under the retries)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.attempts: list[_Attempt] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = time.monotonic()
        try:
            response = await self.inner.complete(request)
        except ModelCallError as exc:
            timed_out = "timed out" in str(exc)
            self.attempts.append(_Attempt(id(request), started, time.monotonic(), exc.status or -1, exc.retry_after, timed_out))
            raise
        self.attempts.append(_Attempt(id(request), started, time.monotonic()))
        return response


def _scenario() -> Scenario:
    return Scenario(
        name="support call",
        setting="A customer phones a help desk.",
        roles=[Role(name="client", goal="get a refund"), Role(name="agent", goal="resolve the issue")],
        max_turns=4,
        min_turns=2,
    )


def _jobs(n: int = N_CONVERSATIONS) -> list[ConversationJob]:
    personas = [Persona(name=f"Person {i}", age=20 + i, occupation="baker") for i in range(12)]
    # one critic attempt per turn keeps the call count (and the test) small; the critic's
    # structured calls are what the truncated and schema-invalid faults hit
    graph = GraphConfig(kind="dyad", critic={"max_attempts": 1}, termination={"detector": False})
    return make_jobs(personas, [_scenario()], graph, n_conversations=n, seed=7)


def _gateway(server: OpenAITestServer, *, max_retries: int) -> tuple[Gateway, AttemptLog]:
    log = AttemptLog(openai_llm(server, timeout_s=CLIENT_TIMEOUT_S))
    return Gateway(log, max_retries=max_retries, retry_base_delay_s=0.01, max_concurrency=64), log


def _records(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "the output ends in a torn line"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


async def test_200_conversations_under_20_percent_faults_lose_and_duplicate_nothing(tmp_path):
    jobs = _jobs()
    out, checkpoints = tmp_path / "conversations.jsonl", tmp_path / "checkpoints.sqlite"
    config = TestServerConfig(latency_s=0.005, fault_rate=0.2, retry_after_s=RETRY_AFTER_S, hang_s=HANG_S, seed=3)
    with OpenAITestServer(config) as server:
        gateway, attempts = _gateway(server, max_retries=1)
        try:
            started = time.monotonic()
            result = await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoints, concurrency=64)
            wall = time.monotonic() - started
        finally:
            await gateway.aclose()
        faults = server.fault_counts

        # every fault kind was really injected, at about the configured rate
        assert set(faults) == set(ALL_FAULTS), faults
        assert 0.12 < sum(faults.values()) / server.request_count < 0.28
        # the client timed out exactly on the injected timeouts: no slow normal reply counted as one
        assert sum(a.timed_out for a in attempts.attempts) == faults["timeout"]

        # none lost, none duplicated: each job id exactly once, every line parses
        records = _records(out)
        ids = Counter(r["id"] for r in records)
        assert len(records) == N_CONVERSATIONS
        assert set(ids) == {j.id for j in jobs} and max(ids.values()) == 1
        assert result.total == N_CONVERSATIONS and result.skipped == 0
        status = Counter(r["status"] for r in records)
        assert set(status) <= {"complete", "failed"}
        assert (status["complete"], status["failed"]) == (result.completed, result.failed)
        # with one retry per call some conversations fail for good, most complete
        assert result.failed > 0 and result.completed > N_CONVERSATIONS // 2

        # a failed conversation says why (one of the injected transport faults) and keeps its turns
        failed_reasons = Counter()
        for record in records:
            if record["status"] == "failed":
                assert record["stop_reason"] == "error"
                kind = [k for k, rx in REASONS.items() if rx.search(record["error"] or "")]
                assert kind, record["error"]
                failed_reasons[kind[0]] += 1
            else:
                assert record["error"] is None and record["stop_reason"] != "error"
                assert 2 <= len(record["utterances"]) <= 4
        assert len(failed_reasons) >= 3, failed_reasons

        # retries honour Retry-After: the next attempt of a 429'd request starts >= Retry-After later
        gaps = _retry_after_gaps(attempts.attempts)
        assert len(gaps) >= 10, "too few 429s were retried to measure"
        assert min(gaps) >= RETRY_AFTER_S * 0.95, f"retried after {min(gaps):.3f}s < Retry-After {RETRY_AFTER_S}s"
        ok = [a.ended - a.started for a in attempts.attempts if a.status is None]
        print(f"\n{N_CONVERSATIONS} conversations under faults {faults}: wall {wall:.1f}s; slowest answered attempt {max(ok):.2f}s")

        # the endpoint recovers: a rerun retries only the failed ones; every id ends complete
        server.configure(fault_rate=0.0)
        server.reset_counts()
        gateway, _ = _gateway(server, max_retries=1)
        try:
            rerun = await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoints, retry_failed=True)
        finally:
            await gateway.aclose()
    assert (rerun.skipped, rerun.completed, rerun.failed) == (result.completed, result.failed, 0)
    latest = latest_conversations(out)
    assert len(latest) == N_CONVERSATIONS and {c.id for c in latest} == {j.id for j in jobs}
    assert all(c.status.value == "complete" for c in latest)
    assert len(_records(out)) == N_CONVERSATIONS + result.failed  # only the retried ones appended again


def _retry_after_gaps(attempts: list[_Attempt]) -> list[float]:
    """Seconds between each 429 that carried Retry-After and the next attempt of the same request."""
    by_request: dict[int, list[_Attempt]] = {}
    for a in sorted(attempts, key=lambda a: a.started):
        by_request.setdefault(a.request, []).append(a)
    gaps = []
    for series in by_request.values():
        for failed, retry in zip(series, series[1:]):
            if failed.status == 429 and failed.retry_after is not None:
                gaps.append(retry.started - failed.ended)
    return gaps


async def test_retry_after_is_measured_and_honoured_over_fixed_backoff():
    """429s with Retry-After 0.3 s: two retries take >= 0.6 s though the base backoff is 10 ms."""
    config = TestServerConfig(fault_rate=1.0, faults=["429"], retry_after_s=0.3)
    with OpenAITestServer(config) as server:
        gateway, attempts = _gateway(server, max_retries=2)
        try:
            started = time.monotonic()
            with pytest.raises(ModelCallError) as info:
                await gateway.text([{"role": "user", "content": "hello"}])
            elapsed = time.monotonic() - started
        finally:
            await gateway.aclose()
    assert info.value.status == 429 and info.value.retry_after == pytest.approx(0.3)
    assert server.request_count == 3
    gaps = _retry_after_gaps(attempts.attempts)
    assert len(gaps) == 2 and min(gaps) >= 0.3 * 0.95
    assert elapsed >= 0.6


@pytest.mark.parametrize("faults", [TRANSPORT_FAULTS, ["500"]], ids=["all-transport-faults", "http-500"])
async def test_persistent_failure_stops_the_run_with_a_clear_message(tmp_path, faults):
    """fault_rate 1.0: the batch stops early with a message naming the endpoint failure."""
    jobs = _jobs(100)
    concurrency, retries, streak = 16, 2, 10  # streak: simulate_batch's default max_consecutive_failures
    out, checkpoints = tmp_path / "conversations.jsonl", tmp_path / "checkpoints.sqlite"
    config = TestServerConfig(fault_rate=1.0, faults=faults, retry_after_s=0.05, hang_s=HANG_S)
    with OpenAITestServer(config) as server:
        gateway, _ = _gateway(server, max_retries=retries)
        try:
            with pytest.raises(PersonaeError) as info:
                await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoints, concurrency=concurrency)
        finally:
            await gateway.aclose()
        requests = server.request_count
        message = str(info.value)
        # stopped, not spinning: only the conversations in flight when the streak was reached
        # were tried (each with its retries), however long each attempt took
        assert requests <= (concurrency + streak) * (retries + 1), requests
        # the message says what happened and what to do
        assert isinstance(info.value, ModelCallError)
        assert re.search(r"in a row", message), message
        assert re.search(r"HTTP 500|HTTP 429|timed out|malformed", message), message
        assert "rerun" in message.lower(), message
        # what was written is whole, failed with its reason, and each id at most once
        records = _records(out)
        assert len(records) >= streak
        assert all(r["status"] == "failed" and r["error"] for r in records)
        assert len({r["id"] for r in records}) == len(records) < len(jobs)

        # the endpoint comes back: rerunning (retrying the failed) finishes every conversation once
        server.configure(fault_rate=0.0)
        gateway, _ = _gateway(server, max_retries=retries)
        try:
            rerun = await simulate_batch(jobs, gateway=gateway, out_path=out, checkpoint_path=checkpoints, retry_failed=True)
        finally:
            await gateway.aclose()
    assert rerun.failed == 0 and rerun.completed == len(jobs)
    latest = latest_conversations(out)
    assert sorted(c.id for c in latest) == sorted(j.id for j in jobs)
    assert all(c.status.value == "complete" for c in latest)
