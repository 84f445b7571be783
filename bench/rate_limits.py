"""Endpoint limits against a quota: throughput over quota, 429s, and the peak of calls in flight.

Runs the real openai client over HTTP against the local test server in quota mode
(a 2 s bucket at the quota; 429 with Retry-After past it):

* ``rpm``: the gateway's limiter set to the server's requests-per-minute quota;
* ``tpm``: the same for tokens per minute (replies use all of ``max_tokens``, so the
  reservation is the real usage);
* ``no limit``: the same quota with no rate configured in the gateway (it learns the quota
  from the ``x-ratelimit-*`` headers; retries absorb the 429s before it does);
* ``two models``: two models on one endpoint, ``max_concurrency=4``: the server's peak.

Throughput is counted after the client bucket's first second (its burst), over the wall
time of the batch. Ratios only; run on a quiet or loaded machine alike (the quotas are far
below what one core sustains).

    python bench/rate_limits.py
"""

from __future__ import annotations

import asyncio
import time

from _common import machine, write_result

from personae.llm import Gateway
from personae.testing.pytest_plugin import openai_llm
from personae.testing.server import OpenAITestServer, TestServerConfig

USER = [{"role": "user", "content": "Introduce yourself in one sentence."}]


async def _batch(server: OpenAITestServer, n: int, **options) -> tuple[float, list, Gateway]:
    gateway = Gateway(openai_llm(server), max_concurrency=8, **options)
    try:
        started = time.perf_counter()
        replies = await asyncio.gather(*(gateway.text(USER, seed=i, max_tokens=8) for i in range(n)))
        return time.perf_counter() - started, replies, gateway
    finally:
        await gateway.aclose()


async def main() -> None:
    rows = []
    rpm, n = 600, 120
    with OpenAITestServer(TestServerConfig(latency_s=0.05, quota_rpm=rpm, quota_window_s=2.0)) as server:
        elapsed, _, gateway = await _batch(server, n, rpm=rpm, max_retries=0)
        ratio = (n - rpm / 60) / elapsed * 60 / rpm
        rows.append(("rpm 600, limiter at the quota", f"{ratio:.3f}", server.quota.rejected, gateway.peak_in_flight))
    tpm, n = 18_000, 160
    with OpenAITestServer(TestServerConfig(latency_s=0.05, quota_tpm=tpm, quota_window_s=2.0)) as server:
        elapsed, replies, gateway = await _batch(server, n, tpm=tpm, max_retries=0)
        used = sum(r.usage.total_tokens for r in replies)
        ratio = (used - tpm / 60) / elapsed * 60 / tpm
        rows.append(("tpm 18000, limiter at the quota", f"{ratio:.3f}", server.quota.rejected, gateway.peak_in_flight))
    rpm, n = 600, 120
    with OpenAITestServer(TestServerConfig(latency_s=0.05, quota_rpm=rpm, quota_window_s=2.0)) as server:
        elapsed, _, gateway = await _batch(server, n, max_retries=8)
        ratio = (n - rpm / 60) / elapsed * 60 / rpm
        rows.append(("rpm 600, no rate set (learned)", f"{ratio:.3f}", server.quota.rejected, gateway.peak_in_flight))
    with OpenAITestServer(TestServerConfig(latency_s=0.2)) as server:
        gateway = Gateway({"default": openai_llm(server, model="a"), "judge": openai_llm(server, model="b")}, max_concurrency=4)
        try:
            await asyncio.gather(*(gateway.text(USER, role="judge" if i % 2 else "default", seed=i) for i in range(48)))
        finally:
            await gateway.aclose()
        rows.append(("two models, one endpoint, limit 4", "-", 0, f"{gateway.peak_in_flight} (server {server.peak_in_flight})"))
    write_result("rate_limits", {
        "machine": machine(),
        "method": __doc__,
        "rows": [{"case": case, "throughput_over_quota": ratio, "rejected_429": rejected, "peak_in_flight": str(peak)} for case, ratio, rejected, peak in rows],
    })
    print(f"{'case':36} {'throughput/quota':>16} {'429s':>5} {'peak in flight':>16}")
    for case, ratio, rejected, peak in rows:
        print(f"{case:36} {ratio:>16} {rejected:>5} {peak!s:>16}")


if __name__ == "__main__":
    asyncio.run(main())
