"""The end detector's question folded into the critic's judge call (``TerminationConfig.fold_into_critic``).

A scripted fake answers the judge and the end question from the prompt text alone, so
the same script gives the separate calls and the combined one their verdicts; the
graph must reach the same transcript and the same stop with fewer calls.
"""

from __future__ import annotations

import json
import re

from _graph_helpers import SCENARIO, persona, runtime, schema_name

from personae.graphs import GraphConfig, make_jobs, run_conversation
from personae.llm import Gateway
from personae.llm.base import LLMRequest
from personae.llm.testing import ScriptedLLM
from personae.models import StopReason, Utterance
from personae.nodes.critic import CriticConfig, make_critic_node
from personae.nodes.state import initial_state
from personae.nodes.termination import EndDetection, TerminationConfig, detector_due, folded_end

# persona replies in call order; the client's third draft is rejected by the judge and revised
TEXTS = [
    "My router is dead.",              # t0 client (judged; too early for the detector)
    "Try restarting it.",              # t1 responder (not reviewed)
    "BAD idea, thanks anyway.",        # t2 client, first draft: a cue (end due) but the judge rejects it
    "It works now, thanks!",           # t2 client, revision: a cue, judged and accepted -> end asked in the judge's call
    "Glad to hear it, thank you.",     # t3 responder: the backstop (every 4), not reviewed -> the detector's own call
    "One more thing about the bill.",  # t4 client
    "Sure, go on.",                    # t5 responder
    "No, that's all, thanks.",         # t6 client: a cue, judged -> the end question answered "ended" in the judge's call
    "Anything else I can do?",         # t7 (only if the conversation did not end)
]
_LINE = re.compile(r"^.+ \((client|responder)\): (.*)$", re.MULTILINE)


def _end_verdict(section: str) -> dict[str, object]:
    last = _LINE.findall(section)[-1][1]
    done = "that's all" in last
    return {"ended": done, "reason": "the client has nothing left" if done else "still going"}


def _script(seen: list[str]):
    def script(request: LLMRequest) -> str:
        content = request.messages[-1].content
        name = schema_name(request)
        if name is None:  # a persona draft
            seen.append("persona")
            return TEXTS[seen.count("persona") - 1]
        seen.append(name)
        if name == "EndDetection":
            return json.dumps(_end_verdict(content))
        judge_part, _, end_part = content.partition("Second, a separate question")
        draft = judge_part.split("Proposed next turn by", 1)[1].split("\n", 1)[1].split("\n\n", 1)[0].strip()
        ok = not draft.startswith("BAD")
        verdict = {"in_character": ok, "role_consistent": True, "follows_constraints": True,
                   "issues": [] if ok else ["not how this client talks"], "feedback": "" if ok else "Say it plainly."}
        if name == "CriticJudgementWithEnd":
            assert _LINE.findall(end_part)[-1][1] == draft  # the end question sees the transcript with the draft committed
            end = _end_verdict(end_part)
            verdict |= {"ended": end["ended"], "end_reason": end["reason"]}
        return json.dumps(verdict)

    return script


async def _run(fold: bool, *, roles: dict[str, str] | None = None):
    seen: list[str] = []
    llm = ScriptedLLM(_script(seen))
    other = ScriptedLLM(_script(seen), model="scripted-other")  # another model with the same script
    gateway = Gateway({"default": llm, "other": other} if roles else llm, roles=roles)
    config = GraphConfig(
        critic={"judge": "always", "speakers": ["client"], "max_attempts": 3},
        termination={"detector_every": 4, "closing": False, "repetition": False, "fold_into_critic": fold},
    )
    [job] = make_jobs([persona("Ann"), persona("Bob")], [SCENARIO], config, n_conversations=1, seed=4)
    conversation = await run_conversation(job, gateway=gateway)
    return conversation, seen, gateway


async def test_folding_the_end_question_gives_the_same_conversation_and_stop_with_fewer_calls():
    separate, seen_separate, gw_separate = await _run(False)
    folded, seen_folded, gw_folded = await _run(True)
    assert [u.text for u in folded.utterances] == [u.text for u in separate.utterances] == [
        "My router is dead.", "Try restarting it.", "It works now, thanks!", "Glad to hear it, thank you.",
        "One more thing about the bill.", "Sure, go on.", "No, that's all, thanks.",
    ]
    assert separate.stop_reason is folded.stop_reason is StopReason.DETECTOR
    assert separate.metadata["stop_detail"] == folded.metadata["stop_detail"] == "the client has nothing left"
    # separately: the detector asks after turns 3 (cue), 4 (backstop) and 7 (cue); folded, only the unreviewed turn 4 asks on its own
    assert seen_separate.count("EndDetection") == 3 and "CriticJudgementWithEnd" not in seen_separate
    assert seen_folded.count("EndDetection") == 1
    assert seen_folded.count("CriticJudgementWithEnd") == 3  # the rejected draft's end answer is dropped with it
    assert seen_folded.count("persona") == seen_separate.count("persona") == 8
    assert gw_separate.usage.total().model_calls - gw_folded.usage.total().model_calls == 2
    ends = {u.turn: u.metadata["critic"].get("end") for u in folded.utterances if "critic" in u.metadata}
    assert ends == {0: None, 2: {"ended": False, "reason": "still going", "turns": 3}, 4: None,
                    6: {"ended": True, "reason": "the client has nothing left", "turns": 7}}
    assert all("end" not in (u.metadata.get("critic") or {}) for u in separate.utterances)


async def test_no_fold_when_another_model_answers_the_end_question():
    conversation, seen, _ = await _run(True, roles={"termination": "other"})
    assert "CriticJudgementWithEnd" not in seen and seen.count("EndDetection") == 3
    assert conversation.stop_reason is StopReason.DETECTOR


async def test_a_critic_built_without_the_termination_config_judges_alone():
    """A user-built graph: the critic node without ``termination`` never asks the end question."""
    seen: list[str] = []
    gateway = Gateway(ScriptedLLM(_script(seen)))
    critic = make_critic_node(CriticConfig(judge="always"), gateway=gateway)
    ann, bob = make_jobs([persona("Ann"), persona("Bob")], [SCENARIO], GraphConfig(), n_conversations=1, seed=4)[0].participants
    state = initial_state(SCENARIO, [ann, bob]) | {
        "transcript": [Utterance(id="u0", speaker=ann.id, turn=0, text="Hi.").model_dump(mode="json"),
                       Utterance(id="u1", speaker=bob.id, turn=1, text="Hello.").model_dump(mode="json")],
        "draft": {"speaker": ann.id, "turn": 2, "attempt": 0, "text": "It works now, thanks!", "metadata": {}},
    }
    out = await critic(state, runtime())
    assert seen == ["CriticJudgement"] and "end" not in out["transcript"][0]["metadata"]["critic"]


def _utt(turn: int, text: str = "thanks", end: dict | None = None) -> Utterance:
    return Utterance(id=f"u{turn}", speaker="ab"[turn % 2], turn=turn, text=text, metadata={"critic": {"end": end}} if end else {})


def test_folded_end_is_only_read_for_the_transcript_it_was_asked_about():
    asked = {"ended": True, "reason": "done", "turns": 3}
    assert folded_end([_utt(0), _utt(1), _utt(2, end=asked)]) == EndDetection(ended=True, reason="done")
    assert folded_end([_utt(0), _utt(1), _utt(2, end=asked), _utt(3)]) is None  # a later turn: the detector asks again
    assert folded_end([_utt(0), _utt(1, end=asked)]) is None  # asked about another transcript
    assert folded_end([_utt(0), _utt(1)]) is None


def test_detector_due_is_the_termination_nodes_schedule():
    config = TerminationConfig(detector_every=4)
    cue = [_utt(0, "Hello there."), _utt(1, "It works, thanks!")]
    assert detector_due(cue, config, min_turns=2, max_turns=8) is True  # the cues start
    assert detector_due([*cue, _utt(2, "Thank you too.")], config, min_turns=2, max_turns=8) is False  # they continue
    assert detector_due(cue, config, min_turns=2, max_turns=2) is False  # max_turns ends it without the detector
    assert detector_due(cue, config, min_turns=3, max_turns=8) is False
    assert detector_due([_utt(t, "Go on.") for t in range(4)], config, min_turns=2, max_turns=8) is True  # the backstop
    assert detector_due(cue, config.model_copy(update={"detector": False}), min_turns=2, max_turns=8) is False


async def test_at_risk_judges_a_draft_whose_end_question_is_asked_anyway_in_the_same_call():
    """judge=at_risk skips a low-risk draft, unless the end detector is due after it: then one call asks both."""
    ann, bob = make_jobs([persona("Ann"), persona("Bob")], [SCENARIO], GraphConfig(), n_conversations=1, seed=4)[0].participants
    state = initial_state(SCENARIO, [ann, bob]) | {
        "transcript": [Utterance(id="u0", speaker=ann.id, turn=0, text="My router does not work.").model_dump(mode="json"),
                       Utterance(id="u1", speaker=bob.id, turn=1, text="Try restarting the router.").model_dump(mode="json")],
        "draft": {"speaker": ann.id, "turn": 2, "attempt": 0, "text": "Restarting helped, it is back online, thanks!", "metadata": {}},
    }
    termination = TerminationConfig(detector_every=12)
    for rides, expected in ((True, ["CriticJudgementWithEnd"]), (False, [])):
        seen: list[str] = []
        critic = make_critic_node(CriticConfig(judge="at_risk", audit_rate=0.0, judge_end_turns=rides), gateway=Gateway(ScriptedLLM(_script(seen))),
                                  termination=termination)
        verdict = (await critic(state, runtime()))["transcript"][0]["metadata"]["critic"]
        assert seen == expected and verdict["llm"] is rides
        assert verdict["judge"]["why"][0].startswith("end question due") is rides
        assert ("end" in verdict) is rides
    plain = {**state, "draft": {**state["draft"], "text": "Restarting helped, it is back online."}}  # no cue: the detector is not due
    seen = []
    critic = make_critic_node(CriticConfig(judge="at_risk", audit_rate=0.0), gateway=Gateway(ScriptedLLM(_script(seen))), termination=termination)
    assert "end" not in (await critic(plain, runtime()))["transcript"][0]["metadata"]["critic"] and seen == []
