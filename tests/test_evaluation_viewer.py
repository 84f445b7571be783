"""The scorecard's transcript viewer (issue 14, item 8): data, flags, caps and escaping.

The browser test of the same page is tests/test_scorecard_browser.py. The conversations
come from the shipped reference dialogues (hand-written, not collected human data) and
echo loops built from them.
"""

from __future__ import annotations

import json

from test_evaluation_reference import echo_loop

from personae.evaluation import EvaluationConfig, evaluate_run
from personae.evaluation.validation import reference_dialogues
from personae.evaluation.viewer import transcript_view, turn_flags
from personae.models import Conversation, Utterance

REJECTED = "REJECTED DRAFT: I am the agent here, let me check your router."


def with_critic_and_confusion(conv: Conversation) -> Conversation:
    """Turn 2 kept after the critic gave up (two rejected drafts), turn 3 revised once, turn 4 written for the partner."""
    turns = sorted(conv.utterances, key=lambda u: u.turn)
    partner = next(p for p in conv.participants if p.id != turns[4].speaker)
    gave_up = {
        "verdict": "gave_up", "attempts": 2, "llm": False, "chosen_attempt": 1,
        "issues": [{"code": "role_confusion", "detail": "claimed to be the agent"}],
        "history": [
            {"attempt": 0, "text": REJECTED, "issues": [{"code": "role_confusion", "detail": "claimed to be the agent"}], "source": "rules"},
            {"attempt": 1, "text": turns[2].text, "issues": [{"code": "llm", "detail": "too formal"}], "source": "llm"},
        ],
    }
    revised = {"verdict": "revised", "attempts": 2, "llm": True,
               "history": [{"attempt": 0, "text": "FIRST TRY, out of character", "issues": [{"code": "llm", "detail": "out of character"}], "source": "llm"}]}
    changed = []
    for u in turns:
        if u.turn == turns[2].turn:
            u = u.model_copy(update={"metadata": {"critic": gave_up}})
        elif u.turn == turns[3].turn:
            u = u.model_copy(update={"metadata": {"critic": revised}})
        elif u.turn == turns[4].turn:
            u = Utterance(speaker=u.speaker, turn=u.turn, text=f"Fine.\n{partner.persona.name}: and I will also reset the line for you.")
        changed.append(u)
    return conv.model_copy(update={"id": f"{conv.id}-critic", "utterances": changed})


async def run(convs, tmp_path, embedder):
    return await evaluate_run(convs, [], config=EvaluationConfig(plots=False), gateway=None, embedder=embedder, out_dir=tmp_path / "out")


async def test_flags_agree_with_the_transcript_metrics(tmp_path, hashing_embedder):
    human = reference_dialogues()[:6]
    convs = human + [echo_loop(c) for c in human[:3]] + [with_critic_and_confusion(human[0])]
    scorecard = await run(convs, tmp_path, hashing_embedder)
    values = {c.conversation_id: c.values for c in scorecard.transcript.per_conversation}
    for conv in convs:
        codes = [{f["code"] for f in flags} for flags in turn_flags(conv)]
        v = values[conv.id]
        assert (v["echo_rate"] or 0) > 0 if any("echo" in c for c in codes) else not v["echo_rate"], conv.id
        assert (v["repetition_rate"] or 0) > 0 if any("repetition" in c for c in codes) else not v["repetition_rate"], conv.id
        assert sum("role_confusion" in c or "prompt_leak" in c for c in codes) == round(v["role_confusion"] * len(conv.utterances)), conv.id
    assert all(not any(flags) for conv in human[1:] for flags in turn_flags(conv))  # the hand-written dialogues are clean
    loop = turn_flags(convs[6])
    assert [f["code"] for f in loop[1]] == ["echo"]
    assert "copies 100% of" in loop[1][0]["detail"] and "turn 0" in loop[1][0]["detail"]


async def test_viewer_shows_critic_verdicts_rejected_drafts_and_flags(tmp_path, hashing_embedder):
    conv = with_critic_and_confusion(reference_dialogues()[0])
    scorecard = await run([conv], tmp_path, hashing_embedder)
    view = transcript_view([conv], scorecard.transcript)
    turns = view["conversations"][0]["turns"]
    assert turns[0]["speaker"] == "Maria Lopez" and turns[0]["role"] == "customer"
    assert turns[2]["critic"]["verdict"] == "gave_up" and turns[2]["critic"]["history"][0]["text"] == REJECTED
    assert turns[2]["critic"]["history"][0]["issues"] == ["role_confusion: claimed to be the agent"]
    assert [f["code"] for f in turns[2]["flags"]] == ["critic_gave_up"]
    assert turns[3]["critic"]["verdict"] == "revised" and turns[3]["critic"]["llm"] is True and not turns[3]["flags"]
    assert [f["code"] for f in turns[4]["flags"]] == ["role_confusion"]
    assert view["conversations"][0]["metrics"]["flagged_turns"] == 2.0
    assert "echo_rate" in view["metrics"] and "flagged_turns" in view["metrics"]

    html = (tmp_path / "out" / "scorecard.html").read_text()
    assert "<h2>Transcripts</h2>" in html and "REJECTED DRAFT" in html and "All 1 conversations." in html
    data = json.loads((tmp_path / "out" / "scorecard.json").read_text())
    assert "REJECTED DRAFT" not in json.dumps(data) and "Maria Lopez" not in json.dumps(data)  # the viewer is HTML-only


async def test_viewer_is_capped_and_says_so(tmp_path, hashing_embedder):
    convs = reference_dialogues()[:5]
    scorecard = await run(convs, tmp_path, hashing_embedder)
    html = scorecard.html({}, conversations=convs, max_conversations=3)
    assert "The first 3 of 5 conversations are embedded here" in html
    view = transcript_view(convs, scorecard.transcript, limit=3)
    assert view["n_total"] == 5 and [c["id"] for c in view["conversations"]] == [c.id for c in convs[:3]]
    assert "<h2>Transcripts</h2>" not in scorecard.html({})  # no conversations given: no viewer


async def test_run_text_cannot_break_out_of_the_page(tmp_path, hashing_embedder):
    conv = reference_dialogues()[0]
    evil = "</script><script>alert(1)</script><!-- & \u2028"
    turns = [u.model_copy(update={"text": evil}) if u.turn == 1 else u for u in conv.utterances]
    conv = conv.model_copy(update={"utterances": turns})
    await run([conv], tmp_path, hashing_embedder)
    html = (tmp_path / "out" / "scorecard.html").read_text()
    assert "<script>alert(1)" not in html and "</script><script>" not in html
    embedded = html.split('<script type="application/json" id="tv-data">')[1].split("</script>")[0]
    assert json.loads(embedded)["conversations"][0]["turns"][1]["text"] == evil
