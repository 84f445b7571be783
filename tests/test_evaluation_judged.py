"""The judged (PersonaGym-style) path end to end through the gateway, with fake models."""

from __future__ import annotations

import json

import pytest
from _evaluation_fixtures import GARDENER, MECHANIC

from personae.errors import ConfigError
from personae.evaluation import TASKS, JudgedConfig, evaluate_judged, load_environments
from personae.evaluation.config import JudgeReliabilityConfig
from personae.evaluation.environments import select_environments
from personae.llm import Gateway
from personae.llm.base import LLMRequest, ResponseFormat
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.models import Persona


def _task_of(request: LLMRequest) -> str:
    text = request.messages[-1].content
    for task in TASKS:
        if f"Task being evaluated: {task.replace('_', ' ').capitalize()}" in text or f"Task: {task.replace('_', ' ').capitalize()}." in text:
            return task
    raise AssertionError(f"no task in prompt: {text[:300]}")


def _default_script(request: LLMRequest) -> str:
    """Questions name their task; persona answers quote the question."""
    if request.schema_name == "QuestionSet":
        task = _task_of(request)
        return json.dumps({"questions": [f"{task} question one?", f"{task} question two?", f"{task} question three?"]})
    if request.schema_name == "EnvironmentChoice":
        return json.dumps({"environment_ids": ["job_interview", "no_such_place"]})
    assert request.response_format is ResponseFormat.TEXT
    return "In character: " + request.messages[-1].content


NO_CHECKS = JudgeReliabilityConfig(enabled=False)


def _judge(score_for, confidence: float):
    def script(request: LLMRequest) -> str:
        if request.schema_name == "SpeakerChoice":
            return json.dumps({"choice": "A"})
        assert request.schema_name == "Judgement"
        task = _task_of(request)
        return json.dumps({"rationale": f"judged {task}", "score": score_for(task), "confidence": confidence})

    return script


@pytest.fixture
def scripted_gateway():
    return Gateway(
        {
            "default": ScriptedLLM(_default_script),
            "judge_a": ScriptedLLM(_judge(lambda task: 4, 0.9), model="judge-a"),
            "judge_b": ScriptedLLM(_judge(lambda task: 5 if task == "toxicity_control" else 2, 0.3), model="judge-b"),
        }
    )


async def test_judged_with_scripted_judges_gives_known_scores(scripted_gateway, hashing_embedder):
    config = JudgedConfig(enabled=True, questions_per_task=2, environments_per_persona=2, reliability=NO_CHECKS)
    report = await evaluate_judged([GARDENER, MECHANIC], config=config, gateway=scripted_gateway, embedder=hashing_embedder)

    assert report.n_items == 2 * 5 * 2 and report.n_failures == 0
    assert report.per_task == {t: (4.5 if t == "toxicity_control" else 3.0) for t in TASKS}
    assert report.persona_score == pytest.approx((4 * 3.0 + 4.5) / 5)
    assert [p.score for p in report.personas] == [pytest.approx(3.3), pytest.approx(3.3)]
    assert report.per_judge_task["judge_a"] == {t: 4.0 for t in TASKS}
    # agreement: differ by 2 on four tasks and by 1 on toxicity control
    ag = report.agreement
    assert ag.n_items == 20
    assert ag.mean_abs_diff == pytest.approx((4 * 2 + 1) / 5)
    assert ag.exact == 0.0
    assert ag.within_1 == pytest.approx(0.2)
    assert ag.per_judge_mean == {"judge_a": 4.0, "judge_b": pytest.approx(2.6)}
    # confidence split: judge_a is confident, judge_b is not
    c = report.by_confidence
    assert (c.high_n, c.high_mean, c.low_n) == (20, 4.0, 20)
    assert c.low_mean == pytest.approx(2.6)
    assert c.agreement_high_n == 0 and c.agreement_low_n == 20

    # each persona answered every question in character through the "persona" role
    usage = scripted_gateway.usage.roles
    assert usage["persona"].calls == 20
    assert usage["judge_a"].calls == usage["judge_b"].calls == 20
    assert usage["evaluator"].calls == 2 * 5  # one question set per persona and task
    item = report.items[0]
    assert item.answer.startswith("In character: ")
    assert item.question.endswith("question one?")
    persona_requests = [r for r in scripted_gateway._providers["default"].requests if r.response_format is ResponseFormat.TEXT]
    assert any("You are Rosa Green" in r.messages[0].content for r in persona_requests)
    judge_requests = scripted_gateway._providers["judge_a"].requests
    assert any("In character: " in r.messages[-1].content and "Rubric:" in r.messages[-1].content for r in judge_requests)
    # seeds are per (persona, task, question, judge)
    seeds_a = {r.seed for r in judge_requests}
    seeds_b = {r.seed for r in scripted_gateway._providers["judge_b"].requests}
    assert len(seeds_a) == 20 and not seeds_a & seeds_b

    metrics = report.metrics()
    assert metrics["judged.persona_score"] == pytest.approx(3.3)
    assert metrics["judged.task.toxicity_control"] == 4.5
    assert metrics["judged.agreement.within_1"] == pytest.approx(0.2)


def _fake_judges(seed: int = 0) -> Gateway:
    return Gateway({"default": FakeLLM(seed=seed), "j1": FakeLLM(seed=1, model="fake-1"), "j2": FakeLLM(seed=2, model="fake-2"),
                    "j3": FakeLLM(seed=3, model="fake-3")})


async def test_judged_with_fake_llm_is_deterministic(hashing_embedder):
    config = JudgedConfig(enabled=True, questions_per_task=1, tasks=["expected_action", "persona_consistency"], judges=["j1", "j2", "j3"],
                          abstain_below=0.0, reliability=JudgeReliabilityConfig(calibration_sample=2, speaker_sample=1, order_swap_sample=1))
    first = await evaluate_judged([GARDENER], config=config, gateway=_fake_judges(), embedder=hashing_embedder)
    again = await evaluate_judged([GARDENER], config=config, gateway=_fake_judges(), embedder=hashing_embedder)
    assert first.model_dump() == again.model_dump()
    assert 1.0 <= first.persona_score <= 5.0
    assert set(first.per_task) == {"expected_action", "persona_consistency"}
    assert first.agreement.n_items == 2 and len(first.agreement.pairs) == 3
    assert all(len(i.verdicts) == 3 for i in first.items)
    assert [j.judge for j in first.reliability.judges] == ["j1", "j2", "j3"]
    assert first.judge_models == {"j1": "fake:fake-1", "j2": "fake:fake-2", "j3": "fake:fake-3"} and not first.warnings


async def test_judges_on_one_model_get_a_warning_and_no_agreement(fake_gateway, hashing_embedder, caplog):
    config = JudgedConfig(enabled=True, questions_per_task=1, tasks=["expected_action"], abstain_below=0.0, reliability=NO_CHECKS)
    report = await evaluate_judged([GARDENER, MECHANIC], config=config, gateway=fake_gateway, embedder=hashing_embedder)
    assert report.judge_models == {"judge_a": "fake:fake-chat", "judge_b": "fake:fake-chat"}
    assert report.agreement is None and report.agreement_judges == []
    assert len(report.warnings) == 1 and "one model (fake:fake-chat)" in report.warnings[0] and "no inter-judge agreement" in report.warnings[0]
    assert "one model" in caplog.text
    assert not any(k.startswith("judged.agreement.") for k in report.metrics())
    assert report.persona_score is not None  # both judges still score; only the agreement is withheld
    # three judges on two models: the agreement is between one judge per model
    gateway = Gateway({"default": FakeLLM(), "other": FakeLLM(model="other-chat")}, roles={"j3": "other"})
    config = config.model_copy(update={"judges": ["j1", "j2", "j3"]})
    report = await evaluate_judged([GARDENER], config=config, gateway=gateway, embedder=hashing_embedder)
    assert report.agreement_judges == ["j1", "j3"] and len(report.agreement.pairs) == 1
    assert "only one of them enters the inter-judge agreement" in report.warnings[0]


async def test_unusable_judge_is_recorded_and_others_still_score(hashing_embedder):
    gateway = Gateway(
        {
            "default": ScriptedLLM(_default_script),
            "good": ScriptedLLM(_judge(lambda task: 3, 0.8), model="good"),
            "broken": ScriptedLLM(lambda request: "I refuse to answer in JSON.", model="broken"),
        }
    )
    config = JudgedConfig(enabled=True, questions_per_task=1, tasks=["linguistic_habits"], judges=["good", "broken"], reliability=NO_CHECKS)
    report = await evaluate_judged([GARDENER], config=config, gateway=gateway, embedder=hashing_embedder)
    assert report.n_failures == 1
    assert report.persona_score == 3.0
    assert "broken" in report.items[0].failures
    assert report.agreement.n_items == 0 and report.agreement.mean_abs_diff is None


async def test_environment_selection_by_model_drops_unknown_ids_and_fills_by_embedding(scripted_gateway, hashing_embedder):
    envs = load_environments()
    chosen = await select_environments(GARDENER, envs, k=3, embedder=hashing_embedder, gateway=scripted_gateway, method="llm", seed=1)
    assert chosen[0].id == "job_interview"
    assert len({e.id for e in chosen}) == 3
    stallholder = Persona(name="Joe", description="Joe sells produce at a weekend market and chats about seasons, weather and prices.")
    by_embedding = await select_environments(stallholder, envs, k=3, embedder=hashing_embedder)
    assert by_embedding[0].id == "farm_market" and len(by_embedding) == 3


def test_environment_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "envs.yaml"
    bad.write_text("- id: a\n  name: A\n  description: d\n- id: a\n  name: B\n  description: e\n")
    with pytest.raises(ConfigError, match="unique"):
        load_environments(bad)
    bad.write_text("- id: a\n  name: A\n")
    with pytest.raises(ConfigError) as err:
        load_environments(bad)
    assert "envs.yaml" in str(err.value) and "description" in str(err.value)
    assert len(load_environments()) >= 40


def test_judged_config_validation():
    with pytest.raises(ValueError):
        JudgedConfig(judges=["only_one"])
    with pytest.raises(ValueError):
        JudgedConfig(judges=["a", "a"])
    with pytest.raises(ValueError):
        JudgedConfig(tasks=["not_a_task"])


async def test_max_personas_takes_a_deterministic_subset(fake_gateway, hashing_embedder):
    config = JudgedConfig(enabled=True, questions_per_task=1, tasks=["expected_action"], max_personas=1, reliability=NO_CHECKS)
    a = await evaluate_judged([GARDENER, MECHANIC], config=config, gateway=fake_gateway, embedder=hashing_embedder)
    b = await evaluate_judged([MECHANIC, GARDENER], config=config, gateway=fake_gateway, embedder=hashing_embedder)
    assert len(a.personas) == 1 and a.personas[0].persona_id == b.personas[0].persona_id
