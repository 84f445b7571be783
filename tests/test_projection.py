"""Egocentric Context Projection, the concat baseline, system prompts and the transcript reducer."""

from __future__ import annotations

import pytest

from personae.llm.base import Message
from personae.models import Participant, Persona, Role, Scenario, Utterance
from personae.nodes.projection import project, project_concat, project_egocentric, render_system_prompt
from personae.nodes.state import merge_by_id, speaker_labels


def _people(*names: str, roles: tuple[str, ...] = ("client", "responder")) -> list[Participant]:
    return [
        Participant(persona=Persona(name=n, occupation="teacher", description=f"{n} is careful."), role=roles[i % len(roles)])
        for i, n in enumerate(names)
    ]


def _utt(speaker: Participant, turn: int, text: str) -> Utterance:
    return Utterance(speaker=speaker.id, turn=turn, text=text)


SCENARIO = Scenario(
    name="Router support",
    setting="A phone call to an internet provider.",
    roles=[Role(name="client", goal="get the router working"), Role(name="responder", goal="solve the problem politely")],
    constraints=["No profanity."],
)


def test_two_speakers_own_turns_are_assistant_others_user_unnamed():
    ann, bob = _people("Ann", "Bob")
    transcript = [_utt(ann, 0, "Hi, my router is dead."), _utt(bob, 1, "Sorry to hear that."), _utt(ann, 2, "It blinks red.")]

    as_bob = project_egocentric(transcript, bob.id, [ann, bob], "SYS-BOB")
    assert [(m.role, m.content) for m in as_bob] == [
        ("system", "SYS-BOB"),
        ("user", "Hi, my router is dead."),
        ("assistant", "Sorry to hear that."),
        ("user", "It blinks red."),
    ]

    as_ann = project_egocentric(transcript, ann.id, [ann, bob], "SYS-ANN", opening="Call the provider.")
    assert [(m.role, m.content) for m in as_ann] == [
        ("system", "SYS-ANN"),
        ("user", "Call the provider."),  # Ann opened: the opening instruction comes first
        ("assistant", "Hi, my router is dead."),
        ("user", "Sorry to hear that."),
        ("assistant", "It blinks red."),
    ]


def test_opening_only_when_speaker_opens_and_continuation_when_speaker_spoke_last():
    ann, bob = _people("Ann", "Bob")
    assert [(m.role, m.content) for m in project_egocentric([], ann.id, [ann, bob], "S", opening="Begin.")] == [
        ("system", "S"),
        ("user", "Begin."),
    ]
    transcript = [_utt(ann, 0, "Hello?")]
    as_bob = project_egocentric(transcript, bob.id, [ann, bob], "S", opening="Begin.", continuation="Go on.")
    assert [m.role for m in as_bob] == ["system", "user"]  # Bob did not open: no opening, no continuation
    as_ann = project_egocentric(transcript, ann.id, [ann, bob], "S", opening="Begin.", continuation="Go on.")
    assert [(m.role, m.content) for m in as_ann][-2:] == [("assistant", "Hello?"), ("user", "Go on.")]


def test_three_speakers_are_named_and_consecutive_others_merged():
    ann, bob, cid = _people("Ann", "Bob", "Cid", roles=("participant",))
    transcript = [
        _utt(ann, 0, "I like plan A."),
        _utt(bob, 1, "Plan B is cheaper."),
        _utt(cid, 2, "What about C?"),
        _utt(ann, 3, "C is risky."),
        _utt(cid, 4, "Fair."),
    ]
    as_ann = project_egocentric(transcript, ann.id, [ann, bob, cid], "S", opening="Discuss.")
    assert [(m.role, m.content) for m in as_ann] == [
        ("system", "S"),
        ("user", "Discuss."),
        ("assistant", "I like plan A."),
        ("user", "Bob: Plan B is cheaper.\n\nCid: What about C?"),
        ("assistant", "C is risky."),
        ("user", "Cid: Fair."),
    ]
    as_bob = project_egocentric(transcript, bob.id, [ann, bob, cid], "S")
    assert [m.role for m in as_bob] == ["system", "user", "assistant", "user"]
    assert as_bob[1].content == "Ann: I like plan A."
    assert as_bob[3].content == "Cid: What about C?\n\nAnn: C is risky.\n\nCid: Fair."


def test_duplicate_names_are_disambiguated_by_role():
    a = Participant(persona=Persona(name="Sam", age=30), role="client")
    b = Participant(persona=Persona(name="Sam", age=50), role="responder")
    c = Participant(persona=Persona(name="Kim"), role="client")
    labels = speaker_labels([a, b, c])
    assert labels == {a.id: "Sam (client)", b.id: "Sam (responder)", c.id: "Kim"}


def test_window_keeps_last_turns_and_still_starts_with_user():
    ann, bob = _people("Ann", "Bob")
    transcript = [_utt(ann if i % 2 == 0 else bob, i, f"turn {i}") for i in range(10)]
    as_ann3 = project_egocentric(transcript, ann.id, [ann, bob], "S", opening="Begin.", window=3)
    assert [(m.role, m.content) for m in as_ann3] == [("system", "S"), ("user", "turn 7"), ("assistant", "turn 8"), ("user", "turn 9")]
    as_ann = project_egocentric(transcript, ann.id, [ann, bob], "S", opening="Begin.", window=4)
    # window of 4 for Ann: turns 6 (Ann), 7, 8 (Ann), 9 → opening inserted before her own first turn
    assert [(m.role, m.content) for m in as_ann] == [
        ("system", "S"),
        ("user", "Begin."),
        ("assistant", "turn 6"),
        ("user", "turn 7"),
        ("assistant", "turn 8"),
        ("user", "turn 9"),
    ]


def test_a_block_window_moves_in_steps_so_successive_prompts_extend_each_other():
    from personae.nodes.projection import window_start

    assert [window_start(n, 4) for n in (3, 4, 5, 9)] == [0, 0, 1, 5]  # sliding: exactly the last 4
    assert [window_start(n, 4, 4) for n in (3, 4, 5, 7, 8, 11, 12)] == [0, 0, 0, 0, 4, 4, 8]
    ann, bob = _people("Ann", "Bob")
    transcript = [_utt(ann if i % 2 == 0 else bob, i, f"turn {i}") for i in range(14)]
    prompts = [project_egocentric(transcript[:n], ann.id, [ann, bob], "S", opening="Begin.", window=4, block=4) for n in (4, 6, 8, 10, 12)]
    extends = [later[: len(earlier)] == earlier for earlier, later in zip(prompts, prompts[1:])]
    assert extends == [True, False, True, False]  # Ann's next call extends her previous one until the start moves on
    assert all(len(p) - 2 >= 4 for p in prompts)  # never fewer than `window` utterances shown (system + opening + turns)
    sliding = [project_egocentric(transcript[:n], ann.id, [ann, bob], "S", window=4) for n in (9, 11)]
    assert sliding[1][: len(sliding[0])] != sliding[0]


def test_the_graph_config_moves_the_window_in_blocks_of_its_own_size_by_default():
    from personae.graphs import GraphConfig

    assert GraphConfig().block == 12 and GraphConfig(window=8, window_block=4).block == 4
    assert GraphConfig(window_mode="sliding").block is None and GraphConfig(window=None).block is None


def test_a_trailing_note_joins_the_last_user_message_or_follows_the_assistant():
    from personae.nodes.projection import with_trailing_note

    sys_msg, user, assistant = Message(role="system", content="S"), Message(role="user", content="hi"), Message(role="assistant", content="yo")
    assert with_trailing_note([sys_msg, user], "note")[-1] == Message(role="user", content="hi\n\nnote")
    assert with_trailing_note([sys_msg, user, assistant], "note")[-1] == Message(role="user", content="note")
    assert with_trailing_note([sys_msg, user], "") == [sys_msg, user]


def test_unknown_speaker_is_rejected():
    ann, bob = _people("Ann", "Bob")
    with pytest.raises(KeyError, match="known"):
        project_egocentric([], "nobody", [ann, bob], "S")


def test_concat_puts_labelled_history_in_one_user_message():
    ann, bob = _people("Ann", "Bob")
    transcript = [_utt(ann, 0, "Hi."), _utt(bob, 1, "Hello, how can I help?")]
    messages = project_concat(transcript, ann.id, [ann, bob], "SYS")
    assert [m.role for m in messages] == ["system", "user"]
    body = messages[1].content
    assert "Ann (client): Hi." in body and "Bob (responder): Hello, how can I help?" in body
    assert body.index("Ann (client): Hi.") < body.index("Bob (responder)")
    assert "Ann" in body.splitlines()[-1] and "client" in body.splitlines()[-1]
    empty = project_concat([], ann.id, [ann, bob], "SYS", opening="Start the call.")
    assert "Start the call." in empty[1].content
    assert project("concat", transcript, ann.id, [ann, bob], "SYS") == messages
    with pytest.raises(ValueError, match="unknown projection"):
        project("other", transcript, ann.id, [ann, bob], "SYS")  # type: ignore[arg-type]


def test_system_prompt_has_persona_role_goal_others_constraints_and_memories():
    ann, bob = _people("Ann", "Bob")
    ann = ann.model_copy(update={"persona": ann.persona.model_copy(update={"values": ["honesty"], "speaking_style": "terse"})})
    prompt = render_system_prompt(ann, SCENARIO, [ann, bob], memories=["Bob fixed my modem last year."])
    for expected in ("Ann", "client", "get the router working", "Bob", "No profanity.", "Bob fixed my modem last year.", "honesty", "terse"):
        assert expected in prompt
    assert "solve the problem politely" not in prompt  # the other role's goal stays private


def test_persona_text_that_looks_like_a_template_stays_inert():
    evil = Participant(persona=Persona(name="Eve", description="{{ scenario.name }} {% for x in [1] %}X{% endfor %}"), role="client")
    bob = _people("Ann", "Bob")[1]
    prompt = render_system_prompt(evil, SCENARIO, [evil, bob])
    assert "{{ scenario.name }} {% for x in [1] %}X{% endfor %}" in prompt


def test_merge_by_id_appends_and_replaces_idempotently():
    a = Utterance(id="u0", speaker="p1", turn=0, text="first")
    b = Utterance(id="u1", speaker="p2", turn=1, text="second")
    merged = merge_by_id([], [a, b])
    assert [u["text"] for u in merged] == ["first", "second"]
    again = merge_by_id(merged, [b])  # a retried node writes the same utterance again
    assert again == merged
    replaced = merge_by_id(merged, Utterance(id="u0", speaker="p1", turn=0, text="edited"))
    assert [u["text"] for u in replaced] == ["edited", "second"]
    assert merge_by_id(merged, None) == merged
