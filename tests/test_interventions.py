"""Interventions: scheduled events in running dyad and group graphs, seen by the transcript,
the projection (what the next speaker's model receives, over real HTTP), memory, resumes,
the experiment file, and an ablation through ``personae evaluate --compare``."""

from __future__ import annotations

import asyncio
import json

import pytest
from _flows_support import fake_experiment, run_cli
from _graph_helpers import SCENARIO, persona

from personae.errors import ConfigError, ModelCallError
from personae.graphs import GraphConfig, latest_conversations, make_jobs, run_conversation, simulate_batch
from personae.graphs.checkpoint import sqlite_checkpointer
from personae.graphs.prebuilt import build_graph
from personae.graphs.sessions import Sessions
from personae.llm import Gateway
from personae.llm.testing import FakeLLM
from personae.models import ConversationStatus, Intervention, Role, Scenario, is_event
from personae.nodes.projection import project_egocentric

PERSONAS = [persona(n) for n in ("Ann", "Bob", "Cid", "Dee")]
PRICE = "From today every plan costs 10 % more."
OUTAGE = "The whole town has lost its internet connection."
EVENT_LABEL = "[Event, announced by the"


def _config(*events: dict, **extra) -> GraphConfig:
    return GraphConfig(critic={"enabled": False}, termination={"detector": False, "closing": False, "repetition": False},
                       events=list(events), **extra)


def _event_messages(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user" and EVENT_LABEL in m["content"]]


def _system(body: dict) -> str:
    return next(m["content"] for m in body["messages"] if m["role"] == "system")


async def test_an_event_is_in_the_transcript_and_in_what_the_next_speakers_receive(openai_server, hashing_embedder, tmp_path):
    """Over real HTTP: the event sits at its turn in the transcript, alternation goes on around it, and each
    recipient's request carries it as a labelled user message; one addressed to a role reaches that role only."""
    from personae.testing.pytest_plugin import server_gateway

    config = _config({"at_turn": 2, "text": PRICE}, {"at_turn": 4, "source": "narrator", "text": OUTAGE, "to": ["responder"]})
    [job] = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=1, seed=3)
    client, responder = job.participants
    async with server_gateway(openai_server) as gateway:
        conversation = await run_conversation(job, gateway=gateway, embedder=hashing_embedder)
    assert conversation.status is ConversationStatus.COMPLETE, conversation.error
    events = [u for u in conversation.utterances if is_event(u)]
    assert [(u.turn, u.speaker, u.text) for u in events] == [(2, "moderator", PRICE), (5, "narrator", OUTAGE)]
    assert events[1].metadata["to"] == [responder.id] and events[0].metadata["to"] is None
    spoken = [u for u in conversation.utterances if not is_event(u)]
    assert len(spoken) == SCENARIO.max_turns and conversation.metrics["turns"] == SCENARIO.max_turns
    assert conversation.metrics["events"] == 2
    assert [u.speaker for u in spoken] == [client.id, responder.id] * (SCENARIO.max_turns // 2)  # alternation unbroken
    assert [u.turn for u in conversation.utterances] == list(range(len(conversation.utterances)))

    requests = [b for b in openai_server.requests if "messages" in b]
    assert len(requests) == SCENARIO.max_turns  # one call per spoken turn, none for events
    seen = [(_event_messages(b), client.persona.name in _system(b).split("\n")[0]) for b in requests]
    # turns 0-1 see no event; from turn 2 on every speaker sees the price rise
    assert [bool(msgs) for msgs, _ in seen[:2]] == [False, False]
    assert all(any(PRICE in m for m in msgs) for msgs, _ in seen[2:])
    assert all(f"[Event, announced by the moderator] {PRICE}" in "".join(msgs) for msgs, _ in seen[2:])
    # the outage is addressed to the responder: in its requests after turn 4, never in the client's
    for msgs, is_client in seen[4:]:
        assert any(OUTAGE in m for m in msgs) is (not is_client)
    assert not any(OUTAGE in _system(b) or any(OUTAGE in m["content"] for m in b["messages"]) for b in requests[:4])


def test_the_projection_labels_events_and_keeps_the_opening():
    from personae.models import Utterance

    ann, bob = (p for p in make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=1, seed=0)[0].participants)
    event = Utterance(id="e0", speaker="narrator", turn=0, text="It is raining.", metadata={"kind": "event", "to": None})
    messages = project_egocentric([event], ann.id, [ann, bob], "SYSTEM", opening="Begin.")
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[1].content == "Begin.\n\n[Event, announced by the narrator] It is raining."
    private = event.model_copy(update={"metadata": {"kind": "event", "to": [bob.id]}})
    assert [m.content for m in project_egocentric([private], ann.id, [ann, bob], "S", opening="Begin.")][1:] == ["Begin."]


async def test_events_are_remembered_by_their_recipients_when_memory_is_on(tmp_path):
    from personae.embeddings import HashingEmbedder
    from personae.memory import AgentMemory, open_qdrant

    config = _config({"at_turn": 1, "text": PRICE}, {"at_turn": 3, "text": OUTAGE, "to": ["client"]},
                     memory={"enabled": True, "reflect": False, "k": 3}, window=2)
    [job] = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=1, seed=1)
    client, responder = job.participants
    with open_qdrant(path=tmp_path / "qdrant") as handle:
        memory = AgentMemory(handle, HashingEmbedder(dim=256))
        conversation = await run_conversation(job, gateway=Gateway(FakeLLM(seed=1)), memory=memory)
        assert conversation.status is ConversationStatus.COMPLETE, conversation.error
        texts = {p.id: [r.text for r in memory.export_records(p.persona.id)] for p in job.participants}
    assert sum(PRICE in t for t in texts[client.id]) == 1 and sum(PRICE in t for t in texts[responder.id]) == 1
    assert sum(OUTAGE in t for t in texts[client.id]) == 1 and not any(OUTAGE in t for t in texts[responder.id])
    assert any(t.startswith('Moderator announced in "Router support"') for t in texts[client.id])


class _FailsOnce(FakeLLM):
    """Fails its ``at``-th call once with a model error, as a dying endpoint would."""

    def __init__(self, at: int, **kw) -> None:
        super().__init__(**kw)
        self.at, self.n = at, 0

    async def complete(self, request):
        self.n += 1
        if self.n == self.at:
            raise ModelCallError("endpoint gone")
        return await super().complete(request)


@pytest.mark.parametrize("fail_at", [2, 3])
async def test_a_resumed_conversation_injects_each_event_exactly_once(tmp_path, hashing_embedder, fail_at):
    """Call 2 fails in the very step that injects the event (after turn 1), call 3 in the step after it."""
    config = _config({"at_turn": 0, "source": "narrator", "text": OUTAGE}, {"at_turn": 2, "text": PRICE})
    [job] = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=1, seed=4)
    async with sqlite_checkpointer(tmp_path / "ckpt.sqlite") as saver:
        gateway = Gateway(_FailsOnce(fail_at, seed=4), max_retries=0)
        graph = build_graph(config, gateway=gateway, embedder=hashing_embedder, checkpointer=saver)
        failed = await run_conversation(job, gateway=gateway, graph=graph)
        assert failed.status is ConversationStatus.FAILED
        resumed = await run_conversation(job, gateway=gateway, graph=graph)
    assert resumed.status is ConversationStatus.COMPLETE, resumed.error
    reference = await run_conversation(job, gateway=Gateway(FakeLLM(seed=4)), embedder=hashing_embedder)
    assert [(u.id, u.turn, u.text) for u in resumed.utterances] == [(u.id, u.turn, u.text) for u in reference.utterances]
    events = [u for u in resumed.utterances if is_event(u)]
    assert [(u.turn, u.text) for u in events] == [(0, OUTAGE), (3, PRICE)]


async def test_a_group_event_targets_one_session_and_policies_skip_it(hashing_embedder):
    group = Scenario(name="Snack panel", setting="Tasting crisps.", roles=[Role(name="participant", goal="be honest")], max_turns=6)
    config = _config({"at_turn": 3, "session": 2, "text": PRICE}, kind="group", turn_policy="round_robin", group_size=3)
    jobs = make_jobs(PERSONAS, [group], config, n_conversations=4, seed=2, sessions=Sessions(count=2))
    assert [j.session for j in jobs] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert [j.group for j in jobs[4:]] == [j.group for j in jobs[:4]] and jobs[4].after == jobs[0].id
    gateway = Gateway(FakeLLM(seed=2))
    first = await run_conversation(jobs[0], gateway=gateway, embedder=hashing_embedder)
    second = await run_conversation(jobs[4], gateway=gateway, embedder=hashing_embedder)
    assert not any(is_event(u) for u in first.utterances)
    [event] = [u for u in second.utterances if is_event(u)]
    assert event.turn == 3 and second.metadata["session"] == 2
    ids = [p.id for p in jobs[4].participants]
    assert [u.speaker for u in second.utterances if not is_event(u)] == [ids[i % 3] for i in range(6)]


def test_the_experiment_file_validates_interventions_naming_the_field(tmp_path):
    from personae.experiment import load_experiment

    def load(interventions, **graph):
        path = fake_experiment(tmp_path, generate=False, max_turns=6,
                               extra={"interventions": interventions, "graph": {"kind": "dyad", **graph}})
        return load_experiment(path)

    exp = load([{"at_turn": 2, "source": "moderator", "text": "Prices rise.", "to": ["client"]}])
    assert exp.graph.events == [Intervention(at_turn=2, text="Prices rise.", to=["client"])]
    assert type(exp).model_validate(exp.model_dump(mode="json")).graph.events == exp.graph.events  # a round trip (e.g. to a worker)
    for bad, field in [
        ([{"at_turn": -1, "text": "x"}], "interventions.0.at_turn"),
        ([{"at_turn": 1}], "interventions.0.text"),
        ([{"at_turn": 1, "text": "x", "to": "everyone"}], "interventions.0.to"),
        ([{"at_turn": 1, "text": "x", "session": 0}], "interventions.0.session"),
        ([{"at_turn": 1, "text": "x", "when": 3}], "interventions.0.when"),
    ]:
        with pytest.raises(ConfigError) as err:
            load(bad)
        assert err.value.field.startswith(field), (bad, err.value)
    with pytest.raises(ConfigError, match=r"interventions.0.at_turn: 6 is never reached"):
        load([{"at_turn": 6, "text": "too late"}])
    with pytest.raises(ConfigError, match=r"interventions.0.session: session 2 never happens"):
        load([{"at_turn": 1, "session": 2, "text": "x"}])  # one session unless simulation.sessions says more
    with pytest.raises(ConfigError, match="not both"):
        load([{"at_turn": 1, "text": "x"}], events=[{"at_turn": 2, "text": "y"}])
    with pytest.raises(ConfigError, match="interview"):
        load([{"at_turn": 1, "text": "x"}], kind="interview", questions=["Why?"])


def test_a_config_without_events_keeps_its_conversation_ids():
    plain = make_jobs(PERSONAS, [SCENARIO], _config(), n_conversations=2, seed=9)
    assert "events" not in _config().model_dump(mode="json")
    with_events = make_jobs(PERSONAS, [SCENARIO], _config({"at_turn": 1, "text": PRICE}), n_conversations=2, seed=9)
    assert {j.id for j in plain}.isdisjoint(j.id for j in with_events)
    # the id of a plain job is what it was before events existed: stable_id over the dump without the key
    from personae.ids import stable_id

    job = plain[0]
    assert job.id == stable_id("conv", 9, 0, SCENARIO.id, [p.id for p in job.participants], _config().model_dump(mode="json"))


def test_an_ablation_with_and_without_the_event_reads_out_through_evaluate_compare(tmp_path, cli_env, hashing_embedder):
    runs = {}
    for name, events in (("with-event", [{"at_turn": 2, "text": PRICE}]), ("without-event", [])):
        jobs = make_jobs(PERSONAS, [SCENARIO], _config(*events), n_conversations=4, seed=5)
        out = tmp_path / name / "conversations.jsonl"
        result = asyncio.run(simulate_batch(jobs, gateway=Gateway(FakeLLM(seed=5)), out_path=out, checkpoint_path=None,
                                            embedder=hashing_embedder))
        assert result.completed == 4
        runs[name] = out
    assert all(any(is_event(u) for u in c.utterances) for c in latest_conversations(runs["with-event"]))
    report = tmp_path / "ablation"
    result = run_cli(["evaluate", str(runs["with-event"].parent), "--compare", str(runs["without-event"].parent), "--out", str(report)])
    assert result.exit_code == 0, result.output
    assert "with-event" in result.output and "without-event" in result.output
    scorecard = json.loads((report / "scorecard.json").read_text())
    compared = {k: v for k, v in scorecard["metrics"].items() if k.startswith("compare.")}
    assert compared, sorted(scorecard)[:20]
