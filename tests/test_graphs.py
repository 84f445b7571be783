"""Prebuilt graphs end to end, jobs, batches (skip, failure, budget), the CLI and the custom example."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from _graph_helpers import SCENARIO, as_json, persona, schema_name
from pydantic import BaseModel

from personae.errors import BudgetExceeded, ConfigError, ModelCallError
from personae.graphs import (
    GraphConfig,
    done_ids,
    build_graph,
    dyad,
    fuse_nodes,
    job_state,
    group,
    interview,
    latest_conversations,
    make_jobs,
    run_conversation,
    simulate_batch,
)
from personae.jsonl import read_jsonl_dicts
from personae.llm import Budget, Gateway
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.models import ConversationStatus, Role, Scenario, StopReason
from personae.nodes.state import RunContext
from personae.validation import validate_data

PERSONAS = [persona(n) for n in ("Ann", "Bob", "Cid", "Dee", "Eve")]
GROUP = Scenario(name="Snack focus group", setting="Tasting a new crisp flavour.", roles=[Role(name="participant", goal="say what you honestly think")], max_turns=12)
INTERVIEW = Scenario(name="Commute survey", roles=[Role(name="interviewer"), Role(name="respondent", goal="answer honestly")], max_turns=20)


def _plain(**termination) -> GraphConfig:
    return GraphConfig(critic={"enabled": False}, termination={"detector": False, **termination})


# ---- prebuilt graphs ---------------------------------------------------------------------------


async def test_dyad_alternates_to_max_turns_and_is_deterministic(hashing_embedder):
    gateway = Gateway(FakeLLM(seed=3))
    [job] = make_jobs(PERSONAS, [SCENARIO], _plain(), n_conversations=1, seed=5)
    first = await run_conversation(job, gateway=gateway, embedder=hashing_embedder)
    assert first.status is ConversationStatus.COMPLETE and first.stop_reason is StopReason.MAX_TURNS
    assert [u.turn for u in first.utterances] == list(range(SCENARIO.max_turns))
    client, responder = job.participants
    assert client.role == "client" and [u.speaker for u in first.utterances[:3]] == [client.id, responder.id, client.id]
    assert len({u.id for u in first.utterances}) == len(first.utterances)
    assert first.metrics["turns"] == 8 and first.metrics["prompt_tokens"] > 0
    again = await run_conversation(job, gateway=Gateway(FakeLLM(seed=3)), embedder=hashing_embedder)
    assert [u.text for u in again.utterances] == [u.text for u in first.utterances]


async def test_dyad_with_critic_and_detector_records_verdicts(hashing_embedder):
    gateway = Gateway(FakeLLM(seed=1))
    # judging every draft and the detector on a fixed schedule (the defaults gate both; see test_critic_gating)
    config = GraphConfig(critic={"judge": "always"}, termination={"detector_schedule": "every", "detector_every": 4})
    jobs = make_jobs(PERSONAS, [SCENARIO], config, n_conversations=3, seed=2)
    for job in jobs:
        conversation = await run_conversation(job, gateway=gateway, embedder=hashing_embedder)
        assert conversation.status is ConversationStatus.COMPLETE
        assert conversation.stop_reason in (StopReason.MAX_TURNS, StopReason.DETECTOR)
        assert all(u.metadata["critic"]["verdict"] in ("accepted", "revised", "gave_up") for u in conversation.utterances)
    assert gateway.usage.roles["critic"].calls > 0 and gateway.usage.roles["termination"].calls > 0
    gated = Gateway(FakeLLM(seed=1))
    conversation = await run_conversation(make_jobs(PERSONAS, [SCENARIO], GraphConfig(), n_conversations=1, seed=2)[0], gateway=gated, embedder=hashing_embedder)
    accepted = [u.metadata["critic"] for u in conversation.utterances if u.metadata["critic"]["verdict"] != "gave_up"]
    assert accepted and all(v["judge"]["why"] for v in accepted)  # every verdict says why the judge ran or not


async def test_concat_projection_sends_one_user_message():
    llm = FakeLLM()
    [job] = make_jobs(PERSONAS, [SCENARIO], _plain().model_copy(update={"projection": "concat"}), n_conversations=1, seed=0)
    await run_conversation(job, gateway=Gateway(llm))
    assert all([m.role for m in r.messages] == ["system", "user"] for r in llm.requests)
    assert "(client):" in llm.requests[3].messages[1].content


async def test_group_with_moderator_names_speakers_and_never_repeats():
    llm = FakeLLM(seed=4)
    config = GraphConfig(kind="group", group_size=4, critic={"enabled": False}, termination={"detector": False})
    [job] = make_jobs(PERSONAS, [GROUP], config, n_conversations=1, seed=1)
    assert len(job.participants) == 4 and {p.role for p in job.participants} == {"participant"}
    conversation = await run_conversation(job, gateway=Gateway(llm))
    speakers = [u.speaker for u in conversation.utterances]
    assert len(speakers) == 12 and all(a != b for a, b in zip(speakers, speakers[1:]))
    assert len(set(speakers)) >= 3
    assert all(u.metadata["turn_policy"]["policy"] == "moderator" for u in conversation.utterances)
    persona_requests = [r for r in llm.requests if not schema_name(r)]
    names = {p.persona.name for p in job.participants}
    assert any(any(m.role == "user" and m.content.split(":")[0] in names for m in r.messages) for r in persona_requests)


@pytest.mark.parametrize("policy", ["round_robin", "random"])
async def test_group_with_other_policies(policy):
    config = GraphConfig(kind="group", turn_policy=policy, group_size=3, critic={"enabled": False}, termination={"detector": False, "max_turns": 9})
    [job] = make_jobs(PERSONAS, [GROUP], config, n_conversations=1, seed=1)
    conversation = await run_conversation(job, gateway=Gateway(FakeLLM()))
    speakers = [u.speaker for u in conversation.utterances]
    assert len(speakers) == 9 and all(a != b for a, b in zip(speakers, speakers[1:]))
    if policy == "round_robin":
        assert speakers[:3] * 3 == speakers


class Commute(BaseModel):
    minutes: int
    mode: str


async def test_interview_asks_each_question_and_extracts_answers():
    answers = iter(["About 40 minutes.", "By bike, mostly.", "unused"])

    def script(request):
        if schema_name(request) == "Commute":
            assert "40 minutes" in request.messages[-1].content and "bike" in request.messages[-1].content
            return as_json({"minutes": 40, "mode": "bike"})
        if schema_name(request) == "CriticJudgement":
            return as_json({"in_character": True, "role_consistent": True, "follows_constraints": True})
        return next(answers)

    config = GraphConfig(kind="interview", questions=["How long is your commute?", "How do you travel?"])
    [job] = make_jobs(PERSONAS, [INTERVIEW], config, n_conversations=1, seed=0)
    assert [p.role for p in job.participants] == ["interviewer", "respondent"]
    graph = interview(config, gateway=Gateway(ScriptedLLM(script)), answer_schema=Commute)
    conversation = await run_conversation(job, gateway=Gateway(FakeLLM()), graph=graph)
    assert conversation.stop_reason is StopReason.QUESTIONS_DONE
    assert [u.text for u in conversation.utterances] == ["How long is your commute?", "About 40 minutes.", "How do you travel?", "By bike, mostly."]
    assert conversation.metadata["extracted"] == {"minutes": 40, "mode": "bike"}
    assert conversation.metadata["qa"][1] == {"question": "How do you travel?", "answer": "By bike, mostly."}


async def test_interview_can_let_the_interviewer_phrase_questions():
    llm = FakeLLM(seed=2)
    config = GraphConfig(kind="interview", questions=["How long is your commute?", "How do you travel?"], phrase_questions=True, critic={"enabled": False})
    [job] = make_jobs(PERSONAS, [INTERVIEW], config, n_conversations=1, seed=0)
    conversation = await run_conversation(job, gateway=Gateway(llm))
    asked = [u for u in conversation.utterances if u.speaker == job.participants[0].id]
    assert [u.metadata["question"] for u in asked] == config.questions
    assert all(u.text != u.metadata["question"] for u in asked)  # worded by the interviewer's model
    assert "How do you travel?" in [r for r in llm.requests if not schema_name(r)][2].messages[0].content
    assert [qa["question"] for qa in conversation.metadata["qa"]] == config.questions


def test_graph_inputs_are_validated():
    with pytest.raises(ConfigError, match="question"):
        validate_data(GraphConfig, {"kind": "interview"})
    with pytest.raises(ConfigError, match="alternate"):
        validate_data(GraphConfig, {"kind": "group", "turn_policy": "alternate"})
    with pytest.raises(ConfigError, match="kind"):
        dyad(GraphConfig(kind="group"), gateway=Gateway(FakeLLM()))
    with pytest.raises(ConfigError, match="AgentMemory"):
        group(GraphConfig(kind="group", memory={"enabled": True}), gateway=Gateway(FakeLLM()))
    with pytest.raises(ConfigError, match="two roles"):
        make_jobs(PERSONAS, [GROUP], GraphConfig(), n_conversations=1, seed=0)
    with pytest.raises(ConfigError, match="distinct personas"):
        make_jobs(PERSONAS[:1], [SCENARIO], GraphConfig(), n_conversations=1, seed=0)
    with pytest.raises(ConfigError, match="at least 1"):
        make_jobs(PERSONAS, [SCENARIO], GraphConfig(), n_conversations=0, seed=0)
    with pytest.raises(ConfigError, match="opener"):
        make_jobs(PERSONAS, [SCENARIO], GraphConfig(opener="judge"), n_conversations=1, seed=0)


def test_make_jobs_refuses_two_personas_with_one_id():
    twin = PERSONAS[1].model_copy(update={"id": PERSONAS[0].id, "name": "Not Ann"})
    with pytest.raises(ConfigError, match="#0 and #2 have the same id"):
        make_jobs([PERSONAS[0], PERSONAS[2], twin], [SCENARIO], GraphConfig(), n_conversations=1, seed=0)
    with pytest.raises(ConfigError, match="same id"):  # a repeated persona, id derived from the content
        make_jobs([*PERSONAS, PERSONAS[3]], [SCENARIO], GraphConfig(), n_conversations=1, seed=0)


def test_make_jobs_is_deterministic_and_covers_every_persona():
    jobs = make_jobs(PERSONAS, [SCENARIO], GraphConfig(), n_conversations=10, seed=9)
    assert [j.id for j in jobs] == [j.id for j in make_jobs(PERSONAS, [SCENARIO], GraphConfig(), n_conversations=10, seed=9)]
    assert len({j.id for j in jobs}) == 10
    assert {j.participants[0].persona.name for j in jobs} == {p.name for p in PERSONAS}
    assert all(j.participants[0].id != j.participants[1].id for j in jobs)
    assert [j.id for j in make_jobs(PERSONAS, [SCENARIO], GraphConfig(), n_conversations=10, seed=10)] != [j.id for j in jobs]


# ---- batches ---------------------------------------------------------------------------------------


def _failing_for(name: str):
    def script(request):
        if f"You are {name}" in request.messages[0].content and not schema_name(request):
            raise ModelCallError("model is gone", status=404, model="scripted", retryable=False)
        return "Fine, thanks." if not schema_name(request) else as_json({"ended": False, "reason": ""})

    return script


async def test_batch_writes_skips_done_and_records_failures(tmp_path):
    out = tmp_path / "conversations.jsonl"
    jobs = make_jobs(PERSONAS, [SCENARIO], _plain(repetition=False), n_conversations=5, seed=0)
    llm = ScriptedLLM(_failing_for("Bob"))
    done = []
    result = await simulate_batch(jobs, gateway=Gateway(llm), out_path=out, checkpoint_path=tmp_path / "ckpt.sqlite", on_done=done.append)
    bob_jobs = [j for j in jobs if any(p.persona.name == "Bob" for p in j.participants)]
    assert result.total == 5 and result.failed == len(bob_jobs) >= 1 and result.completed == 5 - len(bob_jobs)
    assert len(done) == 5
    records = {r["id"]: r for _, r in read_jsonl_dicts(out)}
    assert set(records) == {j.id for j in jobs}
    for job in bob_jobs:
        failed = records[job.id]
        assert failed["status"] == "failed" and "model is gone" in failed["error"] and failed["stop_reason"] == "error"
        bob_first = job.participants[0].persona.name == "Bob"
        assert len(failed["utterances"]) == (0 if bob_first else 1)  # the turns before the failure are kept
    calls = llm.calls
    again = await simulate_batch(jobs, gateway=Gateway(llm), out_path=out, checkpoint_path=tmp_path / "ckpt.sqlite")
    assert (again.skipped, again.completed, again.failed) == (5, 0, 0) and llm.calls == calls
    assert done_ids(out) == {j.id for j in jobs}
    assert done_ids(out, retry_failed=True) == {j.id for j in jobs} - {j.id for j in bob_jobs}
    # the model is back: --retry-failed reruns only the failures, resuming from their checkpoints
    fixed = ScriptedLLM(_failing_for("nobody"))
    retry = await simulate_batch(jobs, gateway=Gateway(fixed), out_path=out, checkpoint_path=tmp_path / "ckpt.sqlite", retry_failed=True)
    assert (retry.skipped, retry.completed) == (5 - len(bob_jobs), len(bob_jobs))
    latest = {c.id: c for c in latest_conversations(out)}
    assert len(latest) == 5 and all(c.status is ConversationStatus.COMPLETE for c in latest.values())
    assert done_ids(out, retry_failed=True) == {j.id for j in jobs}  # judged by each id's latest record
    assert all([u.turn for u in c.utterances] == list(range(8)) for c in latest.values())


async def test_budget_exceeded_stops_the_batch(tmp_path):
    jobs = make_jobs(PERSONAS, [SCENARIO], _plain(), n_conversations=3, seed=0)
    gateway = Gateway(FakeLLM(), budget=Budget(max_model_calls=5))
    with pytest.raises(BudgetExceeded):
        await simulate_batch(jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=None, concurrency=1)


@pytest.mark.parametrize(
    ("template", "problem"),
    [("You are {{ persona.name }}.\n{{ persona.nickname.first }}\n", "persona_system.j2:2: cannot render"),
     ("You are {{ persona.name }}.\n{% if scenario %}\n", "persona_system.j2:2: prompt template 'persona_system' is not valid Jinja2")],
)
async def test_a_broken_prompt_template_stops_the_batch_with_its_file_and_writes_no_failed_records(tmp_path, template, problem):
    from personae.errors import ConfigError
    from personae.prompts import PromptSet

    overrides = tmp_path / "prompts"
    overrides.mkdir()
    (overrides / "persona_system.j2").write_text(template)
    jobs = make_jobs(PERSONAS, [SCENARIO], _plain(), n_conversations=30, seed=0)
    out = tmp_path / "c.jsonl"
    llm = FakeLLM()
    with pytest.raises(ConfigError) as caught:
        await simulate_batch(jobs, gateway=Gateway(llm), out_path=out, checkpoint_path=tmp_path / "ckpt.sqlite",
                             prompts=PromptSet(overrides), concurrency=4)
    assert problem in str(caught.value) and str(overrides / "persona_system.j2") in str(caught.value)
    assert "endpoint" not in str(caught.value)
    assert not out.exists() or out.read_text() == ""  # no "failed" conversation records
    assert llm.calls == 0  # the first conversation to render the template stopped the batch


async def test_build_graph_dispatches_on_kind():
    gateway = Gateway(FakeLLM())
    assert build_graph(GraphConfig(), gateway=gateway).name == "dyad"
    assert build_graph(GraphConfig(kind="group"), gateway=gateway).name == "group"
    assert build_graph(GraphConfig(kind="interview", questions=["Why?"]), gateway=gateway).name == "interview"



async def _node_updates(graph, job) -> list[str]:
    """The node names of a run's steps, in order (one entry per LangGraph step)."""
    config = {"configurable": {"thread_id": job.id}, "recursion_limit": 200}
    context = RunContext(conversation_id=job.id, seed=job.seed)
    return [name async for chunk in graph.astream(job_state(job), config, context=context, stream_mode="updates") for name in chunk]


async def test_a_turn_without_critic_is_one_graph_step_and_the_transcript_is_unchanged(hashing_embedder):
    """Turn policy, termination and memory run fused into the persona's step, as the docs promise."""
    [job] = make_jobs(PERSONAS, [SCENARIO], _plain(), n_conversations=1, seed=5)
    graph = build_graph(job.graph, gateway=Gateway(FakeLLM(seed=3)), embedder=hashing_embedder)
    steps = await _node_updates(graph, job)
    assert steps == ["orchestrator"] + ["persona"] * SCENARIO.max_turns
    fused = await run_conversation(job, gateway=Gateway(FakeLLM(seed=3)), embedder=hashing_embedder)
    assert len(fused.utterances) == SCENARIO.max_turns and fused.stop_reason is StopReason.MAX_TURNS


async def test_a_turn_with_critic_is_persona_critic_and_one_end_of_turn_step(hashing_embedder):
    [job] = make_jobs(PERSONAS, [SCENARIO], GraphConfig(termination={"detector": False}), n_conversations=1, seed=2)
    steps = await _node_updates(build_graph(job.graph, gateway=Gateway(FakeLLM(seed=1)), embedder=hashing_embedder), job)
    turns = steps.count("end_of_turn")
    assert turns == SCENARIO.max_turns and steps.count("critic") == steps.count("persona") >= turns
    assert set(steps) == {"orchestrator", "persona", "critic", "end_of_turn"}


async def test_fuse_nodes_runs_steps_in_order_and_stops_at_a_false_guard():
    seen: list[str] = []

    def step(name: str, **update):
        async def node(state, runtime=None):
            seen.append(f"{name}:{len(state.get('transcript') or [])}:{state.get('stop_reason')}")
            return update
        return node

    said = {"id": "u1", "speaker": "a", "turn": 0, "text": "hi"}
    fused = fuse_nodes(
        step("say", transcript=[said]),
        step("stop", stop_reason="max_turns"),
        (step("next", next_speaker="b"), lambda state: not state.get("stop_reason")),
        name="turn",
    )
    update = await fused({"transcript": []})
    assert fused.__name__ == "turn"
    # each step saw the earlier steps' updates; the guarded step did not run once a stop reason was set
    assert seen == ["say:0:None", "stop:1:None"]
    assert update == {"transcript": [said], "stop_reason": "max_turns"}
    seen.clear()
    assert "next_speaker" in await fuse_nodes(step("a"), (step("b", next_speaker="x"), lambda state: True))({})
    assert seen == ["a:0:None", "b:0:None"]

# ---- CLI and the custom-graph example ------------------------------------------------------------------


def test_cli_simulate_writes_conversations_and_rejects_bad_files(tmp_path, monkeypatch, settings):
    from typer.testing import CliRunner

    from personae.cli import app
    from personae.jsonl import write_jsonl

    monkeypatch.setenv("PERSONAE_LLM_PROVIDER", "fake")
    monkeypatch.setenv("PERSONAE_EMBEDDINGS_PROVIDER", "hashing")
    monkeypatch.setenv("PERSONAE_DATA_DIR", str(tmp_path / "data"))
    write_jsonl(tmp_path / "personas.jsonl", PERSONAS)
    (tmp_path / "scenario.yaml").write_text(SCENARIO.model_dump_json())
    (tmp_path / "graph.yaml").write_text("critic: {max_attempts: 2}\ntermination: {detector: false}\n")
    args = ["simulate", "--personas", str(tmp_path / "personas.jsonl"), "--scenario", str(tmp_path / "scenario.yaml"), "--graph", "dyad", "-n", "3", "--out", str(tmp_path / "out.jsonl"), "--config", str(tmp_path / "graph.yaml")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list(read_jsonl_dicts(tmp_path / "out.jsonl"))) == 3
    (tmp_path / "bad.yaml").write_text("roles: not-a-list\nname: x\n")
    bad = CliRunner().invoke(app, [*args[:3], "--scenario", str(tmp_path / "bad.yaml"), *args[5:]])
    assert isinstance(bad.exception, ConfigError) and "bad.yaml" in str(bad.exception) and "roles" in str(bad.exception)


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "custom_graph.py"
    spec = importlib.util.spec_from_file_location("custom_graph_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def test_custom_graph_example_runs_offline_with_a_one_sided_critic():
    example = _load_example()
    state = await example.negotiate(example.make_gateway(local=False), turns=9, seed=0)
    transcript = state["transcript"]
    roles = {p.id: p.role for p in example.PEOPLE}
    assert len(transcript) == 9 and state["stop_reason"] == "max_turns"
    assert [roles[u["speaker"]] for u in transcript[:4]] == ["mediator", "buyer", "seller", "buyer"]
    assert roles[transcript[4]["speaker"]] == roles[transcript[8]["speaker"]] == "mediator"
    for utt in transcript:
        reviewed = "critic" in utt["metadata"]
        assert reviewed == (roles[utt["speaker"]] == "seller")
        if reviewed:
            assert "final offer" not in utt["text"]
    assert any(u["metadata"].get("critic", {}).get("verdict") == "revised" for u in transcript)


# ---- scale: overlap and bounded prompts --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(170)
@pytest.mark.openai_server(latency_s=0.2, hold_until_in_flight=100, hold_s=120.0)
async def test_100_dyads_overlap_against_the_test_server(openai_server, tmp_path, hashing_embedder):
    """The server answers nothing until 100 calls are in flight at once: the batch must run all 100 conversations together."""
    from personae.testing.pytest_plugin import server_gateway

    personas = [persona(f"P{i}") for i in range(20)]
    config = GraphConfig(critic={"enabled": False}, termination={"detector": False, "max_turns": 10})
    jobs = make_jobs(personas, [SCENARIO.model_copy(update={"max_turns": 10})], config, n_conversations=100, seed=0)
    async with server_gateway(openai_server, max_concurrency=256, timeout_s=120.0) as gateway:
        result = await simulate_batch(
            jobs, gateway=gateway, out_path=tmp_path / "c.jsonl", checkpoint_path=tmp_path / "ckpt.sqlite",
            embedder=hashing_embedder, concurrency=100,
        )
        peak = gateway.peak_in_flight
    turns = [len(r["utterances"]) for _, r in read_jsonl_dicts(tmp_path / "c.jsonl")]
    assert result.completed == 100 and turns == [10] * 100
    assert openai_server.gate_opened and peak == openai_server.peak_in_flight == 100
    assert openai_server.request_count == 100 * 10  # one call per turn, none retried
    ideal = 10 * 0.2  # every conversation overlapped: one chain of 10 model calls
    sequential = 100 * ideal
    print(f"\n100 dyads x 10 turns @200 ms: wall {result.wall_s:.1f}s, ideal {ideal:.1f}s "
          f"(ratio {result.wall_s / ideal:.1f}), sequential {sequential:.0f}s, peak in flight {peak}")


async def test_prompt_tokens_stay_bounded_with_memory_and_window(tmp_path, hashing_embedder):
    from personae.memory import AgentMemory, open_qdrant

    scenario = SCENARIO.model_copy(update={"max_turns": 22})
    base = {"critic": {"enabled": False}, "termination": {"detector": False, "repetition": False, "closing": False}}
    bounded = GraphConfig(**base, window=4, memory={"enabled": True, "k": 4, "reflect": False})
    unbounded = GraphConfig(**base, window=None)

    def tokens(conversation):
        return {u.turn: u.metadata["usage"]["prompt_tokens"] for u in conversation.utterances}

    with open_qdrant(path=tmp_path / "qdrant") as handle:
        memory = AgentMemory(handle, hashing_embedder)
        [job] = make_jobs(PERSONAS, [scenario], bounded, n_conversations=1, seed=0)
        with_memory = tokens(await run_conversation(job, gateway=Gateway(FakeLLM()), memory=memory))
    [job] = make_jobs(PERSONAS, [scenario], unbounded, n_conversations=1, seed=0)
    whole = tokens(await run_conversation(job, gateway=Gateway(FakeLLM())))
    print(f"\nprompt tokens, turn 2 → turn 20: memory(k=4)+window(4): {with_memory[2]} → {with_memory[20]}; "
          f"whole history: {whole[2]} → {whole[20]}")
    assert whole[20] > whole[2] * 1.8  # without a window the prompt grows with the conversation
    assert with_memory[20] < whole[20]
    assert max(with_memory[t] for t in range(8, 22)) - min(with_memory[t] for t in range(8, 22)) < 0.25 * with_memory[20]


async def test_a_batch_changes_the_collector_only_when_asked_and_restores_it(hashing_embedder, tmp_path):
    import gc

    before = gc.get_threshold()
    seen: list[int] = []
    jobs = make_jobs(PERSONAS, [SCENARIO], _plain(), n_conversations=2, seed=5)
    await simulate_batch(jobs, gateway=Gateway(FakeLLM()), out_path=tmp_path / "a.jsonl", checkpoint_path=None, embedder=hashing_embedder,
                         gc_threshold=50_000, on_done=lambda c: seen.append(gc.get_threshold()[0]))
    assert seen == [50_000, 50_000] and gc.get_threshold() == before
    seen.clear()
    # by default a library call leaves the interpreter's setting alone (worker processes raise their own)
    await simulate_batch(jobs, gateway=Gateway(FakeLLM()), out_path=tmp_path / "b.jsonl", checkpoint_path=None, embedder=hashing_embedder,
                         on_done=lambda c: seen.append(gc.get_threshold()[0]))
    assert seen == [before[0]] * 2 and gc.get_threshold() == before


def test_fewer_gc_passes_never_lowers_a_users_setting_nor_undoes_a_later_one():
    import gc

    from personae.graphs.runner import _fewer_gc_passes

    before = gc.get_threshold()
    try:
        gc.set_threshold(80_000, *before[1:])
        with _fewer_gc_passes(50_000):
            assert gc.get_threshold()[0] == 80_000  # already higher: left alone
        gc.set_threshold(*before)
        with _fewer_gc_passes(50_000):
            assert gc.get_threshold()[0] == 50_000
            gc.set_threshold(1_000, *before[1:])  # changed by someone else meanwhile
        assert gc.get_threshold()[0] == 1_000  # not clobbered on the way out
        gc.set_threshold(*before)
        # batches running at once (a flow's shards on threads): the first to end keeps it raised
        first, second = _fewer_gc_passes(50_000), _fewer_gc_passes(50_000)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert gc.get_threshold()[0] == 50_000
        second.__exit__(None, None, None)
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
