"""Agent memory against the real embedded Qdrant engine (tmp dirs), qdrant-client local mode and an
in-memory Qdrant for the server code path, with the hashing embedder (a fake)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
from qdrant_client import QdrantClient

from personae.embeddings import HashingEmbedder
from personae.errors import ConfigError, ModelOutputError, StoreLockedError
from personae.llm import Gateway
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.memory import (
    AgentMemory,
    MemoryRecord,
    Observation,
    QdrantHandle,
    heuristic_importance,
    memory_id,
    migrate_local_store,
    open_qdrant,
)

# the server code path runs on an in-memory Qdrant, which ignores payload indexes
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")


@pytest.fixture
def handle(tmp_path):
    with open_qdrant(path=tmp_path / "qdrant") as h:
        yield h


@pytest.fixture(params=["edge", "local-mode", "server-path"])
def any_handle(request, tmp_path):
    """The embedded engine, qdrant-client local mode, and the server code path (no path
    lock → filtered per-agent loads, payload indexes, vector-search candidates) run on an
    in-memory Qdrant."""
    if request.param == "edge":
        h = open_qdrant(path=tmp_path / "qdrant")
    elif request.param == "local-mode":
        h = open_qdrant(path=tmp_path / "qdrant", backend="local")
    else:
        h = QdrantHandle(QdrantClient(location=":memory:"), None, ":memory:")
    yield h
    h.close()


@pytest.fixture
def memory(handle, hashing_embedder):
    return AgentMemory(handle, hashing_embedder)


def _insight_script(text: str = "Ada cares deeply about her garden and tomatoes.", sources=(1, 2)):
    return ScriptedLLM(lambda request: json.dumps({"insights": [{"insight": text, "sources": list(sources)}]}))


# ---- writing ----------------------------------------------------------------------
async def test_observe_stores_a_record_with_a_stable_id(memory):
    rec = await memory.observe("ada", "I planted tomatoes in my garden", step=3, conversation_id="c1", metadata={"turn": 3})
    assert rec.id == memory_id("ada", "c1", 3, "observation", "I planted tomatoes in my garden")
    assert rec.kind == "observation" and rec.step == 3 and rec.metadata == {"turn": 3}
    assert rec.importance == heuristic_importance("I planted tomatoes in my garden")
    given = await memory.observe("ada", "The bus was late", step=4, importance=0.25)
    assert given.importance == 0.25
    assert memory.count() == 2 and memory.count("ada") == 2 and memory.count("bob") == 0
    assert memory.export_records("ada") == [rec, given]


async def test_reobserving_is_idempotent(memory):
    first = await memory.observe("ada", "I lost my job today", step=1, importance=0.8, conversation_id="c1")
    pending = await memory.pending_importance("ada")
    again = await memory.observe("ada", "I lost my job today", step=1, importance=0.1, conversation_id="c1")
    assert again == first  # the stored record, not the new importance
    batch = await memory.observe_many([
        Observation(agent_id="ada", text="I lost my job today", step=1, importance=0.8, conversation_id="c1"),
        Observation(agent_id="ada", text="New thing", step=2, importance=0.5),
        Observation(agent_id="ada", text="New thing", step=2, importance=0.5),
    ])
    assert batch[0] == first and batch[1] == batch[2]
    assert memory.count("ada") == 2
    assert await memory.pending_importance("ada") == pytest.approx(pending + 0.5)
    # the same text at another step or in another conversation is another memory
    await memory.observe("ada", "I lost my job today", step=1, importance=0.8, conversation_id="c2")
    assert memory.count("ada") == 3


async def test_bad_input_raises_config_error(memory, handle, hashing_embedder):
    with pytest.raises(ConfigError, match="step"):
        await memory.observe("ada", "text", step=-1)
    with pytest.raises(ConfigError, match="importance"):
        await memory.observe("ada", "text", step=0, importance=1.5)
    with pytest.raises(ConfigError):
        await memory.retrieve("ada", "q", k=0)
    with pytest.raises(ConfigError, match="weights"):
        AgentMemory(handle, hashing_embedder, weights=(0, 0, 0))
    with pytest.raises(ConfigError, match="decay"):
        AgentMemory(handle, hashing_embedder, recency_decay=0)


# ---- scoring ----------------------------------------------------------------------
async def _fill(memory, agent="ada"):
    texts = [
        "We talked about the tomato harvest in the garden",  # step 0: old but relevant
        "She bought a new umbrella",
        "The train was delayed by ten minutes",
        "A colleague mentioned the quarterly report",
        "Someone walked a dog past the window",  # step 4: most recent, irrelevant
    ]
    return [await memory.observe(agent, t, step=i, importance=0.5) for i, t in enumerate(texts)]


async def test_relevant_old_memory_beats_irrelevant_recent_one(handle, hashing_embedder):
    memory = AgentMemory(handle, hashing_embedder, weights=(1.0, 1.0, 2.0))
    recs = await _fill(memory)
    hits = await memory.retrieve("ada", "tomato harvest garden", k=3)
    assert hits[0].record == recs[0]
    assert hits[0].relevance == pytest.approx(1.0) and hits[0].recency == pytest.approx(0.0)
    assert hits[0].score > max(h.score for h in hits[1:])
    assert hits[0].score == pytest.approx(1.0 * hits[0].recency + 1.0 * hits[0].importance + 2.0 * hits[0].relevance)
    # with relevance switched off, recency decides
    no_rel = AgentMemory(handle, hashing_embedder, weights=(1.0, 1.0, 0.0))
    assert (await no_rel.retrieve("ada", "tomato harvest garden", k=1))[0].record == recs[-1]


async def test_recent_memory_wins_for_a_neutral_query(memory):
    recs = await _fill(memory)
    hits = await memory.retrieve("ada", "xylophone zeppelin", k=5)
    assert [h.record.step for h in hits] == [4, 3, 2, 1, 0]
    assert hits[0].record == recs[-1] and hits[0].recency == 1.0
    # now_step moves the clock; the order is the same but the scores are on a logical clock
    later = await memory.retrieve("ada", "xylophone zeppelin", k=5, now_step=100)
    assert [h.record.id for h in later] == [h.record.id for h in hits]


async def test_importance_weighting(handle, hashing_embedder):
    memory = AgentMemory(handle, hashing_embedder)
    low = await memory.observe("ada", "Had cereal for breakfast", step=5, importance=0.1)
    high = await memory.observe("ada", "Got engaged to Sam", step=5, importance=0.9)
    hits = await memory.retrieve("ada", "xylophone zeppelin", k=2)
    assert [h.record for h in hits] == [high, low]
    assert hits[0].importance == 1.0 and hits[1].importance == 0.0
    # an old important memory still beats a newer trivial one when importance dominates
    await memory.observe("ada", "Checked the mailbox", step=9, importance=0.05)
    heavy = AgentMemory(handle, hashing_embedder, weights=(1.0, 3.0, 1.0))
    assert (await heavy.retrieve("ada", "xylophone zeppelin", k=1))[0].record == high
    only_recency = AgentMemory(handle, hashing_embedder, weights=(1.0, 0.0, 0.0))
    assert (await only_recency.retrieve("ada", "xylophone zeppelin", k=1))[0].record.step == 9


async def test_retrieval_filters_by_agent_conversation_and_kind(any_handle, hashing_embedder):
    memory = AgentMemory(any_handle, hashing_embedder)
    a = await memory.observe("ada", "garden tomatoes in session one", step=0, conversation_id="s1")
    b = await memory.observe("ada", "garden tomatoes in session two", step=1, conversation_id="s2")
    await memory.observe("bob", "garden tomatoes for bob", step=0, conversation_id="s1")
    everything = await memory.retrieve("ada", "garden tomatoes", k=10)
    assert {h.record.id for h in everything} == {a.id, b.id}
    assert [h.record for h in await memory.retrieve("ada", "garden", k=10, conversation_id="s1")] == [a]
    assert [h.record for h in await memory.retrieve("ada", "garden", k=10, exclude_conversation_id="s2")] == [a]
    assert await memory.retrieve("ada", "garden", k=10, kinds=["reflection"]) == []
    assert await memory.retrieve("nobody", "garden") == []


# ---- reflection ---------------------------------------------------------------------
async def test_reflection_triggers_past_threshold_and_not_before(any_handle, hashing_embedder):
    memory = AgentMemory(any_handle, hashing_embedder)
    llm = _insight_script()
    gateway = Gateway(llm)
    texts = ["I water the tomatoes every morning", "My garden is my pride", "I bought compost", "Tomatoes ripened today"]
    recs = []
    for i, text in enumerate(texts[:3]):
        recs.append(await memory.observe("ada", text, step=i, importance=0.5, conversation_id="c1"))
        assert await memory.reflect_if_due("ada", gateway, threshold=2.0, now_step=i, seed=7) == []
    assert llm.calls == 0
    recs.append(await memory.observe("ada", texts[3], step=3, importance=0.5, conversation_id="c1"))
    out = await memory.reflect_if_due("ada", gateway, threshold=2.0, now_step=3, seed=7, conversation_id="c1", agent_name="Ada")
    assert llm.calls == 1 and llm.requests[0].seed == 7
    prompt = llm.requests[0].messages[-1].content
    assert "Ada" in prompt and all(t in prompt for t in texts) and "[4] Tomatoes ripened today" in prompt
    assert len(out) == 1
    refl = out[0]
    assert refl.kind == "reflection" and refl.step == 3 and refl.conversation_id == "c1"
    assert refl.importance > max(r.importance for r in recs)
    assert refl.metadata["source_ids"] == [recs[0].id, recs[1].id]
    assert refl.metadata["seed"] == 7
    assert await memory.pending_importance("ada") == 0.0
    assert await memory.reflect_if_due("ada", gateway, threshold=2.0, now_step=3, seed=7) == []
    assert llm.calls == 1
    # reflections are retrievable, alone or among observations
    hits = await memory.retrieve("ada", "cares deeply about her garden", k=2)
    assert hits[0].record == refl
    assert [h.record for h in await memory.retrieve("ada", "anything", kinds=["reflection"])] == [refl]
    assert memory.count("ada") == 5


async def test_reflection_with_fake_llm_and_derived_seed(memory, fake_gateway):
    for i in range(6):
        await memory.observe("bob", f"I decided to sell my car number {i}", step=i, importance=0.9)
    out = await memory.reflect_if_due("bob", fake_gateway, threshold=5.0, now_step=6)
    assert 1 <= len(out) <= 3 and all(r.kind == "reflection" for r in out)
    seed = out[0].metadata["seed"]
    assert isinstance(seed, int)
    # citations are real ids of bob's memories (fake numbers out of range are dropped)
    ids = {r.id for r in memory.export_records("bob")}
    assert all(set(r.metadata["source_ids"]) <= ids for r in out)


async def test_failed_reflection_restores_the_accumulator(memory):
    bad = Gateway(ScriptedLLM(lambda request: "no json here"))
    for i in range(3):
        await memory.observe("ada", f"Important event {i}", step=i, importance=0.7)
    with pytest.raises(ModelOutputError):
        await memory.reflect_if_due("ada", bad, threshold=2.0, now_step=3)
    assert await memory.pending_importance("ada") == pytest.approx(2.1)
    out = await memory.reflect_if_due("ada", Gateway(_insight_script("Ada had an eventful week.")), threshold=2.0, now_step=3)
    assert [r.text for r in out] == ["Ada had an eventful week."]


# ---- long-term memory and persistence -------------------------------------------------
async def test_long_term_memory_survives_reopening_and_spans_conversations(tmp_path, hashing_embedder):
    path = tmp_path / "qdrant"
    gateway = Gateway(_insight_script("Ada is devoted to gardening."))
    with open_qdrant(path=path) as h:
        memory = AgentMemory(h, hashing_embedder)
        old = await memory.observe("ada", "I grow heirloom tomatoes", step=0, importance=0.9, conversation_id="monday")
        await memory.observe("ada", "Gardening calms me", step=1, importance=0.9, conversation_id="monday")
        reflections = await memory.reflect_if_due("ada", gateway, threshold=1.5, now_step=1, conversation_id="monday")
        await memory.observe("ada", "I might enter a vegetable show", step=2, importance=0.4, conversation_id="monday")
        before = memory.export_records()
        pending = await memory.pending_importance("ada")
    assert pending == pytest.approx(0.4)
    with open_qdrant(path=path) as h:
        memory = AgentMemory(h, hashing_embedder)
        assert memory.count("ada") == 4
        assert await memory.pending_importance("ada") == pytest.approx(pending)  # rebuilt from the store
        assert await memory.last_step("ada") == 2
        # a new conversation recalls what was said in the earlier one
        hits = await memory.retrieve("ada", "heirloom tomatoes", k=1, exclude_conversation_id="tuesday")
        assert hits[0].record == old
        await memory.observe("ada", "Tuesday I talked about tomatoes again", step=3, conversation_id="tuesday")
        recalled = await memory.retrieve("ada", "tomatoes", k=5, exclude_conversation_id="tuesday")
        assert {h.record.conversation_id for h in recalled} == {"monday"}
        assert reflections[0] in [h.record for h in recalled]
        after = memory.export_records()
        assert after[: len(before)] == before  # insertion order continues after the restart
        assert after[-1].conversation_id == "tuesday"


async def test_a_local_mode_store_is_migrated_to_the_engine_on_first_open(tmp_path, hashing_embedder, caplog):
    path = tmp_path / "qdrant"
    with open_qdrant(path=path, backend="local") as h:  # a store written before issue 17
        assert h.backend == "local"
        memory = AgentMemory(h, hashing_embedder)
        for i in range(30):
            await memory.observe(f"a{i % 3}", f"memory {i} about tomatoes" if i == 7 else f"memory {i}", step=i // 3, conversation_id=f"c{i % 2}")
        await memory.reflect_if_due("a0", Gateway(_insight_script("A0 talks a lot.")), threshold=0.5, now_step=10)
        before = memory.export_records()
        pending = await memory.pending_importance("a1")
        expected = await memory.retrieve("a1", "tomatoes", k=3)
    (path / "edge.migrating" / "junk").mkdir(parents=True)  # a migration that crashed midway is redone
    with caplog.at_level("WARNING", logger="personae.memory.qdrant"), open_qdrant(path=path) as h:
        assert h.backend == "edge"
        memory = AgentMemory(h, hashing_embedder)
        assert memory.export_records() == before
        assert await memory.pending_importance("a1") == pytest.approx(pending)
        assert await memory.retrieve("a1", "tomatoes", k=3) == expected
        assert set(h.client.get_collection("personae_memory").payload_schema) == {"agent_id", "conversation_id", "kind"}
        await memory.observe("a1", "after the move", step=20)
    backups = list(path.glob("local-mode-backup-*"))
    assert len(backups) == 1 and (backups[0] / "meta.json").exists() and (backups[0] / "collection" / "personae_memory").is_dir()
    assert not (path / "meta.json").exists() and not (path / "edge.migrating").exists()
    assert "migrated the Qdrant local-mode store" in caplog.text and str(backups[0]) in caplog.text
    with open_qdrant(path=path) as h:  # nothing left to migrate: the engine's store opens as is
        assert AgentMemory(h, hashing_embedder).count() == len(before) + 1
    assert len(list(path.glob("local-mode-backup-*"))) == 1
    assert migrate_local_store(path) is None  # nothing left to migrate


async def test_export_import_round_trip_into_a_fresh_store(tmp_path, hashing_embedder):
    with open_qdrant(path=tmp_path / "a") as src_handle:
        src = AgentMemory(src_handle, hashing_embedder)
        for agent in ("ada", "bob"):
            for i in range(5):
                await src.observe(agent, f"{agent} memory about topic {i}", step=i, conversation_id=f"c{i % 2}")
        await src.reflect_if_due("ada", Gateway(_insight_script("Ada covers many topics.")), threshold=0.5, now_step=5)
        await src.observe("ada", "after the reflection", step=6, importance=0.3)
        exported = src.export_records()
        expected_hits = await src.retrieve("ada", "topic 3", k=3)
        expected_pending = await src.pending_importance("ada")
    with open_qdrant(path=tmp_path / "b") as dst_handle:
        dst = AgentMemory(dst_handle, hashing_embedder)
        assert dst.import_records(exported) == len(exported) == 12
        assert dst.import_records(exported) == 0  # idempotent
        assert dst.export_records() == exported
        assert dst.export_records("bob") == [r for r in exported if r.agent_id == "bob"]
        assert await dst.retrieve("ada", "topic 3", k=3) == expected_hits
        assert await dst.pending_importance("ada") == pytest.approx(expected_pending) == pytest.approx(0.3)


async def test_delete_agent(memory):
    for i in range(3):
        await memory.observe("ada", f"memory {i}", step=i)
    await memory.observe("bob", "bob's memory", step=0)
    assert memory.delete_agent("ada") == 3
    assert memory.count() == 1 and memory.count("ada") == 0
    assert await memory.retrieve("ada", "memory") == []
    assert await memory.last_step("ada") == -1
    assert memory.delete_agent("ada") == 0


async def test_a_collection_written_with_another_embedder_is_refused(handle):
    await AgentMemory(handle, HashingEmbedder(dim=64)).observe("ada", "hello", step=0)
    with pytest.raises(ConfigError, match="dimension 128"):
        await AgentMemory(handle, HashingEmbedder(dim=128)).observe("ada", "hello", step=0)
    assert AgentMemory(handle, HashingEmbedder(dim=128), collection="other").count() == 0


# ---- locking ----------------------------------------------------------------------------
_OPEN_IN_CHILD = """
import sys
from personae.errors import StoreLockedError
from personae.memory import open_qdrant
try:
    open_qdrant(path=sys.argv[1]).close()
except StoreLockedError as exc:
    print("locked:", exc.path)
else:
    print("opened")
"""


def test_store_locked_in_another_process_and_in_process(tmp_path):
    path = tmp_path / "qdrant"

    def child() -> str:
        done = subprocess.run([sys.executable, "-c", _OPEN_IN_CHILD, str(path)], capture_output=True, text=True, timeout=300)  # a hang guard
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with open_qdrant(path=path):
        assert child() == f"locked: {path}"
        with pytest.raises(StoreLockedError):
            open_qdrant(path=path)
    assert child() == "opened"  # released on close


# ---- concurrency and scale ---------------------------------------------------------------
async def test_many_concurrent_conversations_share_one_memory(memory):
    async def conversation(c: int) -> None:
        for turn in range(5):
            await memory.observe(f"agent{c % 4}", f"conversation {c} turn {turn} says hello", step=turn, conversation_id=f"c{c}")
            await memory.retrieve(f"agent{c % 4}", "hello", k=3)

    await asyncio.gather(*(conversation(c) for c in range(20)))
    assert memory.count() == 100
    assert all(memory.count(f"agent{a}") == 25 for a in range(4))
    assert sorted(r.text for r in memory.export_records("agent1")) == sorted(
        f"conversation {c} turn {t} says hello" for c in range(1, 20, 4) for t in range(5)
    )


def _brute_force_top(records: list[MemoryRecord], query_vec: np.ndarray, embedder, now: int, k: int) -> list[str]:
    def mm(x):
        x = np.asarray(x, dtype=float)
        return np.full_like(x, 0.5) if x.max() - x.min() <= 1e-12 else (x - x.min()) / (x.max() - x.min())

    vecs = embedder.embed([r.text for r in records])
    score = mm([0.95 ** (now - r.step) for r in records]) + mm([r.importance for r in records]) + mm(vecs @ query_vec)
    return [records[j].id for j in sorted(range(len(records)), key=lambda j: (-score[j], -records[j].step, records[j].id))[:k]]


async def test_scale_2000_memories_for_20_agents(handle, hashing_embedder):
    memory = AgentMemory(handle, hashing_embedder)
    searched = AgentMemory(handle, hashing_embedder, exhaustive_limit=0, weights=(0.0, 0.0, 1.0))
    rng = np.random.default_rng(0)
    words = "rain coffee music train office garden city river bread lamp paper window".split()
    observations = []
    for agent in range(20):
        for i in range(100):
            text = " ".join(rng.choice(words, 6)) + (f" secret{agent} keyword" if i == 17 else "")
            observations.append(Observation(agent_id=f"a{agent}", text=text, step=i, importance=float(rng.random())))
    for start in range(0, len(observations), 400):
        await memory.observe_many(observations[start : start + 400])
    assert memory.count() == 2000
    for agent in range(0, 20, 3):
        query = f"secret{agent} keyword"
        top = await memory.retrieve(f"a{agent}", query, k=5)
        records = memory.export_records(f"a{agent}")
        qvec = hashing_embedder.embed([query])[0]
        assert [h.record.id for h in top] == _brute_force_top(records, qvec, hashing_embedder, now=99, k=5)
        assert all(h.record.agent_id == f"a{agent}" for h in top)
        # the vector-search path finds the planted memory among 2,000 as well
        hit = (await searched.retrieve(f"a{agent}", query, k=1))[0]
        assert hit.record.text.endswith(f"secret{agent} keyword")


# ---- importance ---------------------------------------------------------------------------
def test_heuristic_importance_orders_small_talk_below_life_events():
    small = heuristic_importance("Hi, how are you?")
    big = heuristic_importance("I decided to quit my job; I was so stressed and worried, working 60 hours a week")
    assert 0.0 <= small < 0.3 < 0.8 < big <= 1.0
    assert heuristic_importance("") == 0.0
    assert heuristic_importance("The report is due") < heuristic_importance("I promised to finish the report by 5")


async def test_importance_model_rates_unscored_memories(handle, hashing_embedder):
    def rate(request):
        text = " ".join(m.content for m in request.messages)
        return "garbage" if "mumble" in text else json.dumps({"rating": 10 if "wedding" in text else 1})

    llm = ScriptedLLM(rate)
    memory = AgentMemory(handle, hashing_embedder, importance_gateway=Gateway(llm))
    wedding = await memory.observe("ada", "My sister's wedding is tomorrow", step=0)
    toast = await memory.observe("ada", "Toast for breakfast", step=1)
    given = await memory.observe("ada", "Given importance", step=2, importance=0.3)
    fallback = await memory.observe("ada", "mumble mumble", step=3)
    assert (wedding.importance, toast.importance, given.importance) == (1.0, 0.0, 0.3)
    assert fallback.importance == heuristic_importance("mumble mumble")
    rated = [r for r in llm.requests if r.seed is not None]
    assert len({r.seed for r in rated}) == 3  # seeds derive from the record ids
    calls = llm.calls
    await memory.observe("ada", "My sister's wedding is tomorrow", step=0)  # re-observed: no new rating
    assert llm.calls == calls
