"""The memory node and retriever against real Qdrant local mode."""

from __future__ import annotations

import pytest
from _graph_helpers import SCENARIO, apply, as_json, people, runtime, schema_name

from personae.graphs import GraphConfig, dyad, job_state
from personae.graphs.runner import ConversationJob, run_conversation
from personae.llm import Gateway
from personae.llm.testing import ScriptedLLM
from personae.memory import AgentMemory, open_qdrant
from personae.models import Utterance
from personae.nodes.memory import make_memory_node, make_memory_retriever
from personae.nodes.persona import make_persona_node
from personae.nodes.state import initial_state, utterance_id


@pytest.fixture
def memory(tmp_path, hashing_embedder):
    with open_qdrant(path=tmp_path / "qdrant") as handle:
        yield AgentMemory(handle, hashing_embedder)


def _reply_script(request):
    if schema_name(request) == "ReflectionOutput":
        return as_json({"insights": [{"insight": "Ann worries about her router.", "sources": [1, 2]}]})
    if schema_name(request):
        return as_json({"ended": False, "reason": ""})
    return "My router keeps dropping the connection every evening."


async def test_memory_node_observes_every_turn_for_every_participant_idempotently(memory):
    ann, bob = people("Ann", "Bob")
    node = make_memory_node(memory, reflect=False)
    state = initial_state(SCENARIO, [ann, bob])
    for turn, (who, text) in enumerate([(ann, "My router is dead."), (bob, "Let me check the line.")]):
        state = apply(state, {"transcript": [Utterance(id=utterance_id("conv-test", turn), speaker=who.id, turn=turn, text=text)]})
    update = await node(state, runtime())
    assert update["observed"] == 2 and update["memory_base"] == {ann.persona.id: 0, bob.persona.id: 0}
    assert memory.count(ann.persona.id) == 2 and memory.count(bob.persona.id) == 2
    texts = sorted(r.text for r in memory.export_records(ann.persona.id))
    assert texts[0].startswith("Bob (responder) said") and texts[1].startswith("I said")
    assert (await node(apply(state, update), runtime())) == {"observed": 2}
    assert memory.count(ann.persona.id) == 2
    # a conversation started by the runner carries its clock base in the initial
    # (checkpointed) state, so a node re-run after a kill writes the same ids again
    retry = state | {"memory_base": update["memory_base"]}
    await node(retry, runtime())
    await node(retry, runtime())
    assert memory.count(ann.persona.id) == 2 and memory.count(bob.persona.id) == 2


async def test_retriever_skips_what_is_in_the_window_and_feeds_the_persona(memory):
    ann, bob = people("Ann", "Bob")
    for step, text in enumerate(["I said: my cat is called Miso.", "Bob said: the modem is old.", "I said: the router is new."]):
        await memory.observe(ann.persona.id, text, step=step, conversation_id="conv-test")
    retrieve = make_memory_retriever(memory, k=3)
    everything = await retrieve(ann.persona.id, "cat Miso", now_step=3, conversation_id="conv-test", skip_from_step=None)
    assert len(everything) == 3
    older = await retrieve(ann.persona.id, "cat Miso", now_step=3, conversation_id="conv-test", skip_from_step=1)
    assert older == ["I said: my cat is called Miso."]
    llm = ScriptedLLM(lambda r: "ok")
    persona = make_persona_node(Gateway(llm), retriever=retrieve, window=2)
    state = initial_state(SCENARIO, [ann, bob], memory_base={ann.persona.id: 0, bob.persona.id: 0})
    state = apply(state, {"transcript": [Utterance(speaker=bob.id, turn=0, text="Tell me about your cat Miso")]}) | {"next_speaker": ann.id}
    out = await persona(state, runtime("conv-new"))  # the memories are from an earlier conversation
    assert "my cat is called Miso" in llm.requests[0].messages[-1].content  # after the transcript, not in the system prompt
    assert out["transcript"][0]["metadata"]["memories"] >= 1


async def test_memory_in_a_dyad_reflects_and_persists_across_conversations(memory, hashing_embedder):
    ann, bob = people("Ann", "Bob")
    config = GraphConfig(
        memory={"enabled": True, "k": 3, "reflect": True, "reflect_threshold": 0.5},
        critic={"enabled": False}, termination={"detector": False, "max_turns": 4}, window=2,
    )
    llm = ScriptedLLM(_reply_script)
    gateway = Gateway(llm)
    graph = dyad(config, gateway=gateway, embedder=hashing_embedder, memory=memory)
    first = ConversationJob(id="conv-one", scenario=SCENARIO, participants=[ann, bob], graph=config, seed=1)
    done = await run_conversation(first, gateway=gateway, memory=memory, graph=graph)
    assert done.status.value == "complete" and len(done.utterances) == 4
    records = memory.export_records(ann.persona.id)
    assert sum(r.kind == "observation" for r in records) == 4
    assert any(r.kind == "reflection" and "router" in r.text for r in records)
    # a second conversation of the same persona starts its clock after the first and recalls it
    second = ConversationJob(id="conv-two", scenario=SCENARIO, participants=[ann, bob], graph=config, seed=2)
    state = job_state(second, memory_base={ann.persona.id: await memory.last_step(ann.persona.id) + 1})
    assert state["memory_base"][ann.persona.id] >= 4
    llm.requests.clear()
    await run_conversation(second, gateway=gateway, memory=memory, graph=graph)
    first = next(r for r in llm.requests if not schema_name(r)).messages
    # memories come last, after the transcript; the system prompt is the same on every call
    assert "What you remember" in first[-1].content and "router" in first[-1].content
    assert "What you remember" not in first[0].content
    steps = sorted(r.step for r in memory.export_records(ann.persona.id) if r.conversation_id == "conv-two" and r.kind == "observation")
    assert steps[0] >= 4
