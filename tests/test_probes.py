"""Memory probes over a three-session run against the test server (real HTTP): a scripted model
that answers only from what its prompt holds recalls earlier-session facts with memory on, not off."""

from __future__ import annotations

import json
import re

import pytest
from _flows_support import fake_experiment, prefect_api_session, run_cli  # noqa: F401 (a fixture)
from _graph_helpers import SCENARIO, persona

from personae.evaluation.probes import evaluate_probes, extract_probes, recall_score
from personae.graphs import GraphConfig, latest_conversations, make_jobs, simulate_batch
from personae.graphs.sessions import Sessions
from personae.ids import content_hash
from personae.memory import AgentMemory, open_qdrant
from personae.testing.pytest_plugin import server_gateway
from personae.testing.server import OpenAITestServer

PERSONAS = [persona(n) for n in ("Ann", "Bob", "Cid", "Dee")]
ANIMALS = ["goats", "ferrets", "parrots", "llamas", "tortoises", "hamsters", "geese", "rabbits"]
PLACES = ["mill", "harbour", "chapel", "orchard", "bakery", "quarry", "lighthouse", "station"]
NAMES = ["Ottilie", "Bertrand", "Kasimir", "Wendeline", "Ignatius", "Rosalind", "Thaddeus", "Philippa"]
ASKED = "Someone asks you about one of your earlier conversations:"


def _fact(body: dict) -> str:
    """A distinct, fact-like line per request: what a participant states in a session."""
    h = int(content_hash(json.dumps(body["messages"]), length=8), 16)
    return (f"My cousin {NAMES[h % 8]} keeps {10 + h % 89} {ANIMALS[(h >> 3) % 8]} near the old {PLACES[(h >> 6) % 8]} "
            f"since {1950 + (h >> 9) % 70}.")


def _answer(prompt: str) -> str:
    """Answer from the prompt only: the remembered line sharing most words with the question, or nothing."""
    question = prompt.split(ASKED, 1)[1]
    wanted = set(re.findall(r"\w+", question.lower()))
    lines = [line[2:] for line in prompt.split(ASKED, 1)[0].splitlines() if line.startswith("- ")]
    if not lines:
        return "I don't remember."
    return max(lines, key=lambda line: len(wanted & set(re.findall(r"\w+", line.lower()))))


def _probe_questions(prompt: str) -> str:
    """The question writer: one LoCoMo-style question per speaker line about the animals at the place."""
    probes = []
    for speaker, text in re.findall(r"^(\w+): (My cousin .+)$", prompt, flags=re.M)[:3]:
        m = re.search(r"keeps (\d+) (\w+) near the old (\w+) since (\d+)", text)
        probes.append({"speaker": speaker, "question": f"How many animals, and which, did {speaker} say the cousin keeps near the old {m.group(3)} since {m.group(4)}?",
                       "answer": f"{m.group(1)} {m.group(2)}"})
    return json.dumps({"probes": probes})


def scripted(body: dict) -> str | None:
    fmt = body.get("response_format") or {}
    name = fmt.get("json_schema", {}).get("name") if isinstance(fmt, dict) else None
    last = body["messages"][-1]["content"]
    if name == "ProbeQuestions":
        return _probe_questions(last)
    if name is None and ASKED in last:
        return _answer(last)
    if name is None and body["messages"][0]["role"] == "system" and body["messages"][0]["content"].startswith("You are "):
        return _fact(body)
    return None  # reflections, importance: the server's schema-valid default


def test_cloze_extraction_and_recall_scoring():
    from personae.models import Conversation, Participant, Utterance

    people = [Participant(persona=PERSONAS[0], role="client"), Participant(persona=PERSONAS[1], role="responder")]
    c = Conversation(id="conv-x", scenario=SCENARIO, participants=people, metadata={"group": "g", "session": 1}, utterances=[
        Utterance(id="u0", speaker=people[0].id, turn=0, text="Hello there. My cousin Ottilie keeps 42 goats near the old mill."),
        Utterance(id="u1", speaker=people[1].id, turn=1, text="Nice."),
    ])
    [probe] = extract_probes(c, n=3)
    assert probe.answer == "old mill" and "___" in probe.question and "Ann said" in probe.question and probe.speaker == PERSONAS[0].id
    assert recall_score("He keeps them by the old mill", probe.answer) == 1.0 and recall_score("No idea", probe.answer) == 0.0
    assert recall_score("the mill", "old mill") == 0.5


@pytest.mark.timeout(600)
async def test_recall_is_higher_with_memory_on_against_the_test_server(tmp_path, hashing_embedder):
    config = GraphConfig(critic={"enabled": False}, termination={"detector": False, "closing": False, "repetition": False},
                         memory={"enabled": True})
    jobs = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=2, seed=1, sessions=Sessions(count=3, gap="7 days"))
    with OpenAITestServer(reply=scripted) as server, open_qdrant(path=tmp_path / "qdrant") as handle:
        memory = AgentMemory(handle, hashing_embedder)
        async with server_gateway(server) as gateway:
            result = await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "out.jsonl", checkpoint_path=tmp_path / "ckpt.sqlite",
                                          embedder=hashing_embedder, memory=memory)
            assert result.completed == 6
            conversations = latest_conversations(tmp_path / "out.jsonl")
            server.reset_counts()
            report = await evaluate_probes(conversations, gateway=gateway, memory=memory, per_conversation=3, k=16)
        bodies = [b for b in server.requests if "messages" in b and ASKED in b["messages"][-1]["content"]]
    # probes: written by the model about sessions 1 and 2 of each group, asked of both participants, memory on and off
    assert report.sources == {"model": report.n_probes} and report.n_probes == 2 * 2 * 3
    assert {p.session for p in report.probes} == {1, 2}
    assert report.n_answers == len(bodies) == report.n_probes * 2 * 2
    off = [a for a in report.answers if not a.memory]
    assert all(a.memories == 0 and a.recall == 0.0 for a in off)
    assert all(a.memories > 0 for a in report.answers if a.memory)
    assert sum("What you remember" in b["messages"][-1]["content"] for b in bodies) == report.n_answers // 2
    print(f"recall with memory on {report.recall_on:.3f} {report.recall_on_ci}, off {report.recall_off:.3f}; difference {report.difference:.3f} {report.difference_ci}")
    assert report.recall_off == 0.0 and report.recall_on > report.recall_off
    assert report.difference_ci is not None and report.difference_ci[0] > 0
    assert set(report.metrics()) >= {"probes.recall_on", "probes.recall_off", "probes.difference_lo"}


@pytest.mark.timeout(600)
def test_the_pipeline_runs_sessions_across_shards_and_scores_probes(tmp_path, prefect_api_session):
    """``personae run`` with sessions, memory, a session-2 event and probes: each group's sessions stay in one
    shard and in order, the event fires in session 2 only, and the scorecard carries the probe figures."""
    from personae.settings import Settings

    exp = fake_experiment(tmp_path, n_conversations=2, shards=2, max_turns=6, extra={
        "memory": {"enabled": True},
        "simulation": {"n_conversations": 2, "shards": 2, "concurrency": 4, "sessions": {"count": 2, "gap": "3 days"}},
        "interventions": [{"at_turn": 1, "session": 2, "text": "The shop moved to Harbour Street 12."}],
        "evaluation": {"probes": {"enabled": True, "questions": "extract", "per_conversation": 2}},
    })
    data_dir = tmp_path / "data"
    result = run_cli(["run", str(exp), "--data-dir", str(data_dir), "--no-track"])
    assert result.exit_code == 0, result.output
    root = Settings(data_dir=data_dir).run_dir("flows-test")
    conversations = latest_conversations(root / "conversations.jsonl")
    assert len(conversations) == 4 and {c.status.value for c in conversations} == {"complete"}
    by_group: dict[str, list] = {}
    for c in conversations:  # in the order written
        by_group.setdefault(c.metadata["group"], []).append(c)
    assert len(by_group) == 2 and all([c.metadata["session"] for c in held] == [1, 2] for held in by_group.values())
    assert all(bool(c.metadata["events"]) == (c.metadata["session"] == 2) for c in conversations)
    card = json.loads((root / "scorecard.json").read_text())
    assert card["probes"]["n_probes"] == 4 and card["probes"]["sources"] == {"extract": 4}
    assert card["probes"]["recall_on"] is not None and card["probes"]["recall_off"] is not None
