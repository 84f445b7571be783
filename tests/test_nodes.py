"""Node factories: orchestrator policies, persona, critic, termination (memory: test_memory_node.py)."""

from __future__ import annotations

import pytest
from _graph_helpers import SCENARIO, apply, as_json, is_structured, people, runtime, schema_name

from personae.errors import ConfigError
from personae.llm import Gateway
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.models import Scenario, StopReason, Utterance
from personae.nodes.critic import ConstraintRule, CriticConfig, make_critic_node, route_after_critic
from personae.nodes.orchestrator import make_orchestrator_node
from personae.nodes.persona import clean_reply, make_persona_node
from personae.nodes.state import derive_seed, initial_state, utterance_id
from personae.nodes.termination import TerminationConfig, check_rules, make_termination_node, route_after_termination

GROUP = Scenario(name="Focus group", setting="A tasting panel.", roles=[{"name": "participant", "goal": "give honest opinions"}], max_turns=20)


def _state(participants, scenario=SCENARIO, texts=()):
    state = initial_state(scenario, participants)
    for turn, (who, text) in enumerate(texts):
        state = apply(state, {"transcript": [Utterance(id=utterance_id("conv-test", turn), speaker=who.id, turn=turn, text=text)]})
    return state


# ---- orchestrator ---------------------------------------------------------------------------


async def test_alternate_opens_with_first_role_then_alternates():
    ann, bob = people("Ann", "Bob")  # Ann is the client (first role)
    node = make_orchestrator_node("alternate")
    first = await node(_state([bob, ann]), runtime())
    assert first["next_speaker"] == ann.id and first["speaker_choice"]["opener"] is True
    assert (await node(_state([bob, ann], texts=[(ann, "hi")]), runtime()))["next_speaker"] == bob.id
    assert (await node(_state([bob, ann], texts=[(ann, "hi"), (bob, "hello")]), runtime()))["next_speaker"] == ann.id
    opener_bob = make_orchestrator_node("alternate", opener="responder")
    assert (await opener_bob(_state([ann, bob]), runtime()))["next_speaker"] == bob.id


async def test_alternate_refuses_groups_and_round_robin_cycles():
    a, b, c = people("Ann", "Bob", "Cid", roles=("participant",))
    with pytest.raises(ConfigError, match="exactly two"):
        await make_orchestrator_node("alternate")(_state([a, b, c], GROUP, [(a, "x")]), runtime())
    node = make_orchestrator_node("round_robin")
    order = []
    state = _state([a, b, c], GROUP)
    for turn in range(6):
        speaker = (await node(state, runtime()))["next_speaker"]
        order.append(speaker)
        state = apply(state, {"transcript": [Utterance(speaker=speaker, turn=turn, text=f"t{turn}")]})
    assert order == [a.id, b.id, c.id, a.id, b.id, c.id]


async def test_random_never_repeats_and_is_seeded():
    group = people("Ann", "Bob", "Cid", "Dee", roles=("participant",))

    async def run(seed):
        node = make_orchestrator_node("random")
        state, order = _state(group, GROUP), []
        for turn in range(20):
            speaker = (await node(state, runtime(seed=seed)))["next_speaker"]
            order.append(speaker)
            state = apply(state, {"transcript": [Utterance(speaker=speaker, turn=turn, text=f"t{turn}")]})
        return order

    order = await run(1)
    assert all(x != y for x, y in zip(order, order[1:]))
    assert len(set(order)) == 4
    assert order == await run(1)
    assert order != await run(2)


async def test_moderator_picks_among_the_others():
    a, b, c = people("Ann", "Bob", "Cid", roles=("participant",))
    seen = []

    def script(request):
        seen.append(request)
        return as_json({"speaker": "Cid", "reason": "Cid has been quiet"})

    gateway = Gateway(ScriptedLLM(script))
    node = make_orchestrator_node("moderator", gateway=gateway)
    out = await node(_state([a, b, c], GROUP, [(a, "I love it."), (b, "Too salty.")]), runtime())
    assert out["next_speaker"] == c.id
    assert out["speaker_choice"] == {"policy": "moderator", "reason": "Cid has been quiet", "attempts": 1}
    options = seen[0].json_schema["properties"]["speaker"]["enum"]
    assert sorted(options) == ["Ann", "Cid"]  # the latest speaker is not offered
    assert "Too salty." in seen[0].messages[-1].content


async def test_moderator_falls_back_to_round_robin_after_bounded_attempts():
    a, b, c = people("Ann", "Bob", "Cid", roles=("participant",))
    llm = ScriptedLLM(lambda request: "I think Ann should talk")  # never valid JSON
    node = make_orchestrator_node("moderator", gateway=Gateway(llm), moderator_attempts=2)
    out = await node(_state([a, b, c], GROUP, [(a, "x"), (b, "y")]), runtime())
    assert out["next_speaker"] == c.id  # round robin after Bob
    assert out["speaker_choice"]["fallback"] == "round_robin"
    assert 2 <= llm.calls <= 8  # 2 attempts, each through the bounded structured-output chain


async def test_custom_policy_sync_async_and_validated():
    a, b, c = people("Ann", "Bob", "Cid", roles=("participant",))

    async def always_cid(view):
        return "Cid"  # a display name is accepted too

    out = await make_orchestrator_node(always_cid)(_state([a, b, c], GROUP), runtime())
    assert out == {"next_speaker": c.id, "speaker_choice": {"policy": "custom"}}
    last_but_one = make_orchestrator_node(lambda view: view.participants[-1].id if view.turn else view.participants[0].id)
    assert (await last_but_one(_state([a, b, c], GROUP, [(a, "x")]), runtime()))["next_speaker"] == c.id
    with pytest.raises(ConfigError, match="unknown participant"):
        await make_orchestrator_node(lambda view: "Zed")(_state([a, b, c], GROUP), runtime())
    with pytest.raises(ConfigError, match="turn policy"):
        make_orchestrator_node("loudest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gateway"):
        make_orchestrator_node("moderator")


# ---- persona ----------------------------------------------------------------------------------


async def test_persona_commits_a_clean_utterance_with_derived_seed_and_usage():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(lambda request: "Ann: Hello, my router is broken.")
    node = make_persona_node(Gateway(llm))
    state = _state([ann, bob]) | {"next_speaker": ann.id}
    out = await node(state, runtime("conv-x", 3))
    [utt] = out["transcript"]
    assert utt["text"] == "Hello, my router is broken."
    assert utt["id"] == utterance_id("conv-x", 0) and utt["speaker"] == ann.id and utt["turn"] == 0
    assert utt["metadata"]["usage"]["prompt_tokens"] > 0
    request = llm.requests[0]
    assert request.seed == derive_seed(3, "conv-x", 0, 0) == utt["metadata"]["seed"]
    assert request.messages[0].role == "system" and "Ann" in request.messages[0].content
    assert request.messages[-1].role == "user"  # the opening instruction


async def test_persona_review_mode_writes_a_draft_and_revises_with_feedback():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(lambda request: f"reply {len(request.messages)}")
    node = make_persona_node(Gateway(llm), review=True)
    state = _state([ann, bob], texts=[(ann, "Hi.")]) | {"next_speaker": bob.id}
    out = await node(state, runtime())
    assert "transcript" not in out and out["draft"]["attempt"] == 0 and out["draft"]["turn"] == 1
    state = state | {"draft": out["draft"] | {"feedback": "- Be more specific."}}
    out2 = await node(state, runtime())
    assert out2["draft"]["attempt"] == 1
    revise_request = llm.requests[-1]
    assert revise_request.messages[-2].role == "assistant" and revise_request.messages[-2].content == out["draft"]["text"]
    assert "Be more specific." in revise_request.messages[-1].content
    assert revise_request.seed != llm.requests[0].seed


async def test_persona_uses_the_participants_own_model():
    ann, bob = people("Ann", "Bob")
    big = ScriptedLLM(lambda request: "from the big model")
    gateway = Gateway({"default": FakeLLM(), "big": big})
    bob = bob.model_copy(update={"model": "big"})
    out = await make_persona_node(gateway)(_state([ann, bob], texts=[(ann, "Hi.")]) | {"next_speaker": bob.id}, runtime())
    assert out["transcript"][0]["text"] == "from the big model" and big.calls == 1


def test_clean_reply_strips_own_prefix_and_quotes_only():
    assert clean_reply('  "Ann (client): Sure thing."  ', ["Ann", "client"]) == "Sure thing."
    assert clean_reply("**Ann**: Sure.", ["Ann"]) == "Sure."
    assert clean_reply("Bob: Sure.", ["Ann"]) == "Bob: Sure."  # someone else's prefix is the critic's business


# ---- critic -------------------------------------------------------------------------------------


def _critic_script(persona_replies, verdicts=None):
    """A model playing the persona (replies in order) and the critic (verdicts in order, default accept)."""
    replies, judged = list(persona_replies), list(verdicts or [])

    def script(request):
        if schema_name(request) == "CriticJudgement":
            verdict = judged.pop(0) if judged else True
            return as_json({"in_character": verdict, "role_consistent": True, "follows_constraints": True, "issues": [] if verdict else ["too formal"], "feedback": "" if verdict else "Sound like a teacher, less formal."})
        return replies.pop(0)

    return script


async def _turn(persona_node, critic_node, state):
    """persona ⟲ critic until the critic commits; returns (state, persona calls)."""
    calls = 0
    while True:
        state = apply(state, await persona_node(state, runtime()))
        calls += 1
        state = apply(state, await critic_node(state, runtime()))
        if route_after_critic(state) == "accept":
            return state, calls


async def test_critic_sends_an_echo_back_then_accepts_the_revision(hashing_embedder):
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(_critic_script(["I can reset it remotely for you.", "Great, please reset it now."]))
    gateway = Gateway(llm)
    persona = make_persona_node(gateway, review=True)
    critic = make_critic_node(CriticConfig(max_attempts=3), gateway=gateway, embedder=hashing_embedder)
    state = _state([ann, bob], texts=[(ann, "My router is dead."), (bob, "I can reset it remotely for you.")]) | {"next_speaker": ann.id}
    state, calls = await _turn(persona, critic, state)
    assert calls == 2
    last = state["transcript"][-1]
    assert last["text"] == "Great, please reset it now." and last["turn"] == 2
    verdict = last["metadata"]["critic"]
    assert verdict["verdict"] == "revised" and verdict["attempts"] == 2 and verdict["llm"] is True
    assert verdict["history"][0]["issues"][0]["code"] == "echo"
    revision_prompt = [r for r in llm.requests if not is_structured(r)][1].messages[-1].content
    assert "Bob" in revision_prompt and "repeated" in revision_prompt
    assert len([r for r in llm.requests if schema_name(r) == "CriticJudgement"]) == 1  # the echo never reached the LLM


async def test_critic_llm_rejection_then_give_up_keeps_best_attempt():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(_critic_script(["Reply one.", "Reply two.", "Reply three."], verdicts=[False, False, False]))
    gateway = Gateway(llm)
    state = _state([ann, bob], texts=[(ann, "Hello?")]) | {"next_speaker": bob.id}
    state, calls = await _turn(make_persona_node(gateway, review=True), make_critic_node(CriticConfig(max_attempts=3, judge="always"), gateway=gateway), state)
    assert calls == 3
    last = state["transcript"][-1]
    verdict = last["metadata"]["critic"]
    assert verdict["verdict"] == "gave_up" and verdict["attempts"] == 3
    assert last["text"] == "Reply three." and verdict["chosen_attempt"] == 2  # equal penalties: the latest wins
    assert [h["issues"][0]["detail"] for h in verdict["history"]] == ["Sound like a teacher, less formal."] * 3
    assert state["draft"] is None


async def test_critic_give_up_prefers_an_llm_objection_over_a_rule_failure():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(_critic_script(["A decent reply.", "", ""], verdicts=[False]))
    gateway = Gateway(llm)
    state = _state([ann, bob], texts=[(ann, "Hello?")]) | {"next_speaker": bob.id}
    state, _ = await _turn(make_persona_node(gateway, review=True), make_critic_node(CriticConfig(max_attempts=3, judge="always"), gateway=gateway), state)
    last = state["transcript"][-1]
    assert last["text"] == "A decent reply." and last["metadata"]["critic"]["chosen_attempt"] == 0


async def test_cheap_checks_role_confusion_rules_length_and_scope():
    ann, bob = people("Ann", "Bob")
    gateway = Gateway(ScriptedLLM(_critic_script([])))
    config = CriticConfig(
        max_attempts=2, max_chars=60,
        rules=[ConstraintRule(pattern=r"\bdamn\b", message="No swearing."), ConstraintRule(pattern=r"\?", kind="require", message="Ask a question.")],
    )
    critic = make_critic_node(config, gateway=gateway)
    base = _state([ann, bob], texts=[(ann, "Hello?")])

    async def issues(text, speaker=bob):
        draft = {"speaker": speaker.id, "turn": 1, "text": text, "attempt": 0, "feedback": None, "history": [], "metadata": {}}
        out = await critic(base | {"draft": draft}, runtime())
        return [i["code"] for i in out["draft"]["history"][-1]["issues"]] if out.get("draft") else []

    assert await issues("How can I help?") == []
    assert await issues("Ann: my router is dead. How?") == ["role_confusion"]
    assert await issues("I am the client here, right?") == ["role_confusion"]
    assert await issues("That damn router. Which model?") == ["constraint"]
    assert await issues("I will check the router.") == ["constraint"]
    assert await issues("Let me explain everything about routers in great detail, step by step, okay?") == ["too_long"]
    assert await issues("   ") == ["empty"]
    client_only = make_critic_node(config.model_copy(update={"speakers": ["client"]}), gateway=gateway)
    draft = {"speaker": bob.id, "turn": 1, "text": "Ann: damn", "attempt": 0, "feedback": None, "history": [], "metadata": {}}
    out = await client_only(base | {"draft": draft}, runtime())
    assert out["transcript"][0]["text"] == "Ann: damn" and "critic" not in out["transcript"][0]["metadata"]


async def test_critic_accepts_when_the_critic_model_reply_is_unusable():
    ann, bob = people("Ann", "Bob")
    gateway = Gateway(ScriptedLLM(lambda request: "not json at all"))
    critic = make_critic_node(CriticConfig(), gateway=gateway)
    draft = {"speaker": bob.id, "turn": 1, "text": "How can I help?", "attempt": 0, "feedback": None, "history": [], "metadata": {}}
    out = await critic(_state([ann, bob], texts=[(ann, "Hello?")]) | {"draft": draft}, runtime())
    assert out["transcript"][0]["metadata"]["critic"]["verdict"] == "accepted"


# ---- termination ----------------------------------------------------------------------------------


def _utts(*pairs):
    return [Utterance(speaker=who, turn=i, text=text) for i, (who, text) in enumerate(pairs)]


async def test_rule_max_turns_and_empty():
    config = TerminationConfig()
    four = _utts(("a", "hi"), ("b", "hello"), ("a", "so"), ("b", "well"))
    assert (await check_rules(four, config, max_turns=4))[0] is StopReason.MAX_TURNS
    assert await check_rules(four, config, max_turns=5) is None
    empties = _utts(("a", "hi"), ("b", " "), ("a", ""))
    assert (await check_rules(empties, config, max_turns=10))[0] is StopReason.EMPTY
    assert await check_rules(empties, config.model_copy(update={"empty_limit": 3}), max_turns=10) is None


async def test_rule_closing_needs_both_sides_and_min_turns():
    config = TerminationConfig()
    both = _utts(("a", "Thanks, that fixed it."), ("b", "Glad to help. Have a nice day!"), ("a", "You too, bye!"))
    assert (await check_rules(both, config, max_turns=10))[0] is StopReason.CLOSING
    one = _utts(("a", "Thanks."), ("b", "Anything else?"), ("a", "No, bye!"))
    assert await check_rules(one, config, max_turns=10) is None
    assert await check_rules(both, config, max_turns=10, min_turns=6) is None
    assert await check_rules(both, config.model_copy(update={"closing": False}), max_turns=10) is None


async def test_rule_repetition_loop(hashing_embedder):
    config = TerminationConfig()
    loop = _utts(("a", "Did you restart it?"), ("b", "Yes I did."), ("a", "Did you restart it?"), ("b", "Yes, I did!"))
    assert (await check_rules(loop, config, max_turns=20))[0] is StopReason.REPETITION
    single = _utts(("a", "Did you restart it?"), ("b", "Yes I did."), ("a", "Is the light green?"), ("b", "Yes I did."))
    assert await check_rules(single, config, max_turns=20) is None
    near = _utts(("a", "did you restart the router today"), ("b", "yes i restarted the router twice today"), ("a", "did you restart the router today please"), ("b", "yes i restarted the router twice today ok"))
    assert await check_rules(near, config, max_turns=20) is None  # not identical: only an embedder can tell
    assert (await check_rules(near, config.model_copy(update={"repetition_threshold": 0.8}), max_turns=20, embedder=hashing_embedder))[0] is StopReason.REPETITION


async def test_rule_questions_done():
    qs = _utts(("i", "Q1"), ("r", "A1"), ("i", "Q2"), ("r", "A2"))
    assert (await check_rules(qs, TerminationConfig(), max_turns=20, questions=2, interviewer="i"))[0] is StopReason.QUESTIONS_DONE
    assert await check_rules(qs[:3], TerminationConfig(), max_turns=20, questions=2, interviewer="i") is None


async def test_llm_detector_runs_on_schedule_and_records_the_reason():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(lambda request: as_json({"ended": True, "reason": "the problem is solved"}))
    node = make_termination_node(TerminationConfig(detector_every=4, closing=False), gateway=Gateway(llm))
    texts = [(ann, "My router is dead."), (bob, "Try restarting."), (ann, "Done, it works."), (bob, "Great."), (ann, "Indeed.")]
    assert await node(_state([ann, bob], texts=texts[:3]), runtime()) == {}
    assert llm.calls == 0  # 3 turns: not a detector turn
    out = await node(_state([ann, bob], texts=texts[:4]), runtime())
    assert out == {"stop_reason": StopReason.DETECTOR.value, "stop_detail": "the problem is solved"}
    assert llm.calls == 1 and "Done, it works." in llm.requests[0].messages[0].content
    assert route_after_termination(out) == "stop" and route_after_termination({}) == "continue"
    rules_first = await node(_state([ann, bob], texts=texts[:4]) | {"scenario": SCENARIO.model_copy(update={"max_turns": 4}).model_dump()}, runtime())
    assert rules_first["stop_reason"] == "max_turns" and llm.calls == 1  # a rule fired: no LLM call


async def test_llm_detector_unusable_reply_continues():
    ann, bob = people("Ann", "Bob")
    node = make_termination_node(TerminationConfig(detector_every=2), gateway=Gateway(ScriptedLLM(lambda r: "maybe?")))
    assert await node(_state([ann, bob], texts=[(ann, "a"), (bob, "b")]), runtime()) == {}


async def test_llm_detector_runs_when_closing_cues_start_and_as_a_backstop():
    ann, bob = people("Ann", "Bob")
    llm = ScriptedLLM(lambda request: as_json({"ended": False, "reason": "not yet"}))
    node = make_termination_node(TerminationConfig(detector_every=6, closing=False), gateway=Gateway(llm))
    texts = [(ann, "My router is dead."), (bob, "Try restarting it."), (ann, "Okay, it works now, thanks!"),
             (bob, "Glad to hear it, thank you."), (ann, "One more thing about the bill."), (bob, "Sure, go on.")]
    ran = []
    for n in range(2, len(texts) + 1):
        before = llm.calls
        await node(_state([ann, bob], texts=texts[:n]), runtime())
        ran.append(llm.calls - before)
    # turn 3 starts the cues (asked), turn 4 continues them (not asked again), turn 6 is the backstop
    assert ran == [0, 1, 0, 0, 1]
    every = make_termination_node(TerminationConfig(detector_every=6, closing=False, detector_schedule="every"), gateway=Gateway(llm))
    before = llm.calls
    await every(_state([ann, bob], texts=texts[:3]), runtime())
    assert llm.calls == before  # the fixed schedule ignores cues
