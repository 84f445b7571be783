"""Refinement toward human answers (PEvo) and calibration, on a synthetic target with a known answer model.

The scripted respondents' answers depend on one attribute with known probabilities
(tests/_refine_support.py); the simulated population has the wrong mix of it. The
reviser is either the deterministic MixtureReviser or the LLM reviser over a scripted
fake model (ScriptedReviser) that reads the prompt's evidence.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import _refine_support as S
from _flows_support import prefect_api_session  # noqa: F401 - fixture
from personae.llm import Gateway
from personae.survey import run_survey
from personae.survey.calibration import apply_mapping, calibrate_report, calibrate_survey, fit_mapping, rake_weights, target_marginals
from personae.survey.realism import distance, realism_report
from personae.survey.refine import RefineConfig, refine_personas
from personae.survey.revise import LLMReviser, MixtureReviser, PersonaRevision, PersonaRevisions, training_view
from personae.survey.split import split_questions, sub_instrument
from personae.survey.targets import Distribution, HumanTargets
from personae.testing.reviser import ScriptedReviser


def _setup(seed: int = 3):
    inst = S.instrument()
    model = S.respondents(inst, seed=seed)
    return inst, model, S.targets(inst, model)


def _config(**kw) -> RefineConfig:
    return RefineConfig(**{"attributes": S.REVISABLE, "mode": "direct", "max_rounds": 3, "patience": 1, **kw})


# ---- refinement ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llm", "mixture"])
async def test_refinement_halves_the_held_out_divergence(tmp_path, kind):
    inst, model, targets = _setup()
    fake = ScriptedReviser(model)
    gateway = Gateway(fake.llm())
    reviser = LLMReviser(gateway, max_cells=2) if kind == "llm" else MixtureReviser(max_cells=2)
    seen = []
    result, refined = await refine_personas(inst, S.population(), targets, gateway=gateway, reviser=reviser, config=_config(),
                                            out_dir=tmp_path, on_round=seen.append)
    assert [r.round for r in seen] == [r.round for r in result.rounds] and seen[0].note == "baseline"
    assert result.best_round >= 1 and result.rounds[result.best_round].kept
    assert result.test_before > 0.15
    assert result.test_reduction >= 0.5, (result.test_before, result.test_after)  # the bar: held-out divergence halved
    # revisions only touched the revisable attribute, and moved union members toward resisting change
    before = {p.id: p for p in S.population()}
    for persona in refined:
        assert {k: v for k, v in persona.attributes.items() if k != S.OUTLOOK} == {k: v for k, v in before[persona.id].attributes.items() if k != S.OUTLOOK}
    members = [p for p in refined if p.attributes[S.REGION] == "yes"]
    assert 0.6 <= sum(p.attributes[S.OUTLOOK] == S.PES for p in members) / len(members) <= 1.0
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved == result.split.model_dump() and set(saved["test"]).isdisjoint(saved["train"] + saved["validation"])
    assert (tmp_path / "personas_refined.jsonl").exists() and json.loads((tmp_path / "refine.json").read_text())["test_reduction"] >= 0.5
    if kind == "llm":
        assert fake.prompts and reviser.calls == len(fake.prompts)
    else:
        assert not fake.prompts
        moved = [p for p in refined if p.attributes[S.OUTLOOK] != before[p.id].attributes[S.OUTLOOK]]
        assert moved and all(p.description == f"Someone who {p.attributes[S.OUTLOOK]}; union member: {p.attributes[S.REGION]}." for p in moved)


async def test_no_revision_prompt_mentions_a_test_or_validation_question(tmp_path):
    inst, model, targets = _setup()
    fake = ScriptedReviser(model)
    llm = fake.llm()
    gateway = Gateway(llm)
    result, _ = await refine_personas(inst, S.population(), targets, gateway=gateway, reviser=LLMReviser(gateway, max_cells=2),
                                      config=_config(max_rounds=2, patience=2), out_dir=tmp_path)
    # every message of every request the model received that was not a survey question: the revision prompts, all scanned
    revision = [r for r in llm.requests if r.schema_name == "PersonaRevisions"]
    assert len(revision) == len(fake.prompts) >= 2
    assert all(r.schema_name == "SurveyAnswer" for r in llm.requests if r not in revision)
    prompts = ["\n".join(m.content for m in r.messages) for r in revision]
    held_out = result.split.test + result.split.validation
    for prompt in prompts:
        for qid in held_out:
            assert not re.search(rf"\b{re.escape(qid)}\b", prompt), f"{qid} leaked into a revision prompt"
            assert inst.question(qid).text not in prompt
        for qid in result.split.train:  # and the train questions are there
            assert qid in prompt and inst.question(qid).text in prompt


async def test_the_training_view_holds_train_questions_only(tmp_path):
    inst, model, targets = _setup()
    _, frame = await run_survey(inst, S.population(4, 4), gateway=Gateway(model.llm()), out_dir=tmp_path, mode="direct")
    split = split_questions(inst, targets, seed=1)
    assert split == split_questions(inst, targets, seed=1) and split != split_questions(inst, targets, seed=2)
    view = training_view(frame, inst, targets, split, S.REVISABLE)
    assert [q.id for q in view.questions] == split.train
    assert {c.cell for c in view.cells} == {"union_member=yes", "union_member=no"}
    for cell in view.cells:
        assert set(cell.distances) | set(cell.simulated) | set(cell.human) <= set(split.train)
    for per_value in view.by_value[S.OUTLOOK].values():
        assert set(per_value) == set(split.train)
    dumped = view.model_dump_json()
    for qid in split.test + split.validation:
        assert qid not in dumped
    assert [c.mean_distance for c in view.cells] == sorted((c.mean_distance for c in view.cells), reverse=True)
    assert [q.id for q in sub_instrument(inst, split.test).questions] == split.test


class _Worse:
    """A reviser that makes every persona embrace change (validation gets worse)."""

    calls = 0

    async def revise(self, personas, view, *, seed):
        return PersonaRevisions(revisions=[PersonaRevision(persona_id=p.id, attributes=[{"attribute": S.OUTLOOK, "value": S.OPT}]) for p in personas])


async def test_stops_on_no_improvement_and_keeps_the_baseline(tmp_path):
    inst, model, targets = _setup()
    gateway = Gateway(model.llm())
    result, refined = await refine_personas(inst, S.population(6, 4), targets, gateway=gateway, reviser=_Worse(), config=_config(patience=2, max_rounds=5),
                                            out_dir=tmp_path)
    assert [(r.round, r.kept) for r in result.rounds] == [(0, True), (1, False), (2, False)]
    assert result.stop_reason == "no improvement in 2 round(s)" and result.best_round == 0
    assert result.test_after == result.test_before and not (tmp_path / "test_after").exists()
    assert [p.attributes for p in refined] == [p.attributes for p in S.population(6, 4)]


async def test_stops_on_the_round_and_model_call_budgets(tmp_path):
    inst, model, targets = _setup()
    result, _ = await refine_personas(inst, S.population(6, 4), targets, gateway=Gateway(model.llm()), reviser=MixtureReviser(),
                                      config=_config(max_rounds=1, patience=3), out_dir=tmp_path / "rounds")
    assert [r.round for r in result.rounds] == [0, 1] and result.stop_reason == "budget: 1 rounds"
    gateway = Gateway(model.llm())
    result, _ = await refine_personas(inst, S.population(6, 4), targets, gateway=gateway, reviser=MixtureReviser(),
                                      config=_config(max_rounds=5, max_model_calls=10), out_dir=tmp_path / "calls")
    assert [r.round for r in result.rounds] == [0] and result.stop_reason == "budget: 10 model calls"
    assert result.rounds[0].model_calls == 10 * 6  # 10 respondents × 6 train+validation questions, direct: one call each


# ---- calibration ----------------------------------------------------------------------------
def _frame(rows):
    """rows: (respondent, {attr: value}, question, option)"""
    return pd.DataFrame([{"respondent_id": r, **{f"attr.{k}": v for k, v in attrs.items()}, "question_id": q, "option": o, "value": None,
                          "status": "answered", "position": 0, "rank": None} for r, attrs, q, o in rows])


def test_raking_recovers_target_marginals_and_answers_on_a_deterministic_case():
    inst, _, _ = _setup()
    rows = []
    # 30 members (20 embrace change), 10 non-members (5 embrace): members say "agree", non-members "disagree"
    for i in range(40):
        member = "yes" if i < 30 else "no"
        outlook = S.OPT if (i < 20 or 30 <= i < 35) else S.PES
        rows.append((f"r{i}", {S.REGION: member, S.OUTLOOK: outlook}, "q_parks", "agree" if member == "yes" else "disagree"))
    frame = _frame(rows)
    targets = HumanTargets()
    targets.add("q_parks", {}, Distribution(shares={"agree": 0.5, "disagree": 0.5}, n=200))
    for value in ("yes", "no"):
        targets.add("q_parks", {S.REGION: value}, Distribution(shares={"agree": 1.0} if value == "yes" else {"disagree": 1.0}, n=100))
    marginals = target_marginals(targets)
    assert marginals == {S.REGION: {"no": 0.5, "yes": 0.5}}
    marginals[S.OUTLOOK] = {S.OPT: 0.4, S.PES: 0.6}
    raking = rake_weights(frame, marginals)
    assert raking.max_error <= 0.02
    for attribute, shares in marginals.items():
        for value, share in shares.items():
            assert abs(raking.achieved[attribute][value] - share) <= 0.02
    assert raking.unweighted[S.REGION] == {"no": 0.25, "yes": 0.75}
    assert sum(raking.weights.values()) / len(raking.weights) == pytest.approx(1.0)
    sub = sub_instrument(inst, ["q_parks"])
    raw = realism_report(frame, sub, targets)
    calibrated = calibrate_report(raw, frame, sub, targets, raking=raking)
    q = calibrated.question("q_parks")
    assert q.reweighted == pytest.approx({"agree": 0.5, "disagree": 0.5}, abs=0.02)  # the target answer marginals
    assert q.reweighted_distance <= 0.02
    assert q.distance == raw.question("q_parks").distance == pytest.approx(0.25 * 2 / 4)  # raw reported unchanged beside it
    assert q.simulated == {"agree": 0.75, "disagree": 0.25}
    assert calibrated.distances() == [{"question": "q_parks", "raw": q.distance, "reweighted": q.reweighted_distance, "mapped": None}]
    assert "survey.q.q_parks.reweighted_distance" in calibrated.metrics() and "survey.q.q_parks.distance" in calibrated.metrics()


def test_raking_warns_when_a_target_value_has_no_respondent():
    frame = _frame([("a", {S.REGION: "yes"}, "q_parks", "agree"), ("b", {S.REGION: "yes"}, "q_parks", "agree")])
    raking = rake_weights(frame, {S.REGION: {"yes": 0.5, "no": 0.5}})
    assert raking.max_error == pytest.approx(0.5) and any("no simulated respondent" in w for w in raking.warnings)


async def test_raking_a_surveyed_population_to_the_targets(tmp_path):
    inst, model, targets = _setup()
    marginals = {**target_marginals(targets), S.OUTLOOK: {S.OPT: 0.35, S.PES: 0.65}}  # the humans' mix (0.5·0.2 + 0.5·0.5 embrace)
    people = S.population()
    _, frame = await run_survey(inst, people, gateway=Gateway(model.llm()), out_dir=tmp_path, mode="direct")
    infeasible = rake_weights(frame, marginals)  # no member resists change: the outlook margin is out of reach
    assert infeasible.max_error > 0.1 and any("cannot be met jointly" in w for w in infeasible.warnings)
    people = [p.model_copy(update={"attributes": {**p.attributes, S.OUTLOOK: S.PES}}) if i < 4 else p for i, p in enumerate(people)]
    _, frame = await run_survey(inst, people, gateway=Gateway(model.llm()), out_dir=tmp_path / "mixed", mode="direct")
    raking = rake_weights(frame, marginals)
    assert raking.max_error <= 0.02 and not raking.warnings
    raw = realism_report(frame, inst, targets)
    calibrated = calibrate_report(raw, frame, inst, targets, raking=raking)
    assert calibrated.metrics()["survey.mean_distance_reweighted"] < 0.5 * raw.mean_distance
    assert calibrated.mean_distance == raw.mean_distance


def test_the_mapping_learned_on_train_questions_corrects_a_shared_shift_on_test_questions():
    inst, _, _ = _setup()
    human = {"disagree": 0.25, "neither": 0.5, "agree": 0.25}
    shifted = {"neither": 0.25, "agree": 0.5, "strongly agree": 0.25}  # every answer one step more agreeable
    train, test = ["q_bread", "q_parks", "q_taxes"], ["q_music", "q_salt"]
    targets = HumanTargets()
    rows = []
    for qid in train + test:
        targets.add(qid, {}, Distribution(shares=human))
        for i, (code, share) in enumerate(shifted.items()):
            rows += [(f"r{i}-{k}", {}, qid, code) for k in range(int(share * 4))]
    frame = _frame(rows)
    raw = realism_report(frame, inst, targets)
    mapping = fit_mapping(raw, inst, train)
    assert mapping.shift == pytest.approx(-0.25) and mapping.stretch == pytest.approx(1.0) and mapping.fitted_on == train
    assert apply_mapping(mapping, inst.question("q_music"), shifted) == pytest.approx(human)
    calibrated = calibrate_report(raw, frame, inst, targets, mapping=mapping)
    for qid in test:
        q = calibrated.question(qid)
        assert q.mapped_distance == pytest.approx(0.0, abs=1e-12) and q.distance == pytest.approx(0.25)
    assert all(calibrated.question(q).mapped is None for q in train)  # never applied where it was fitted
    assert distance(inst.question("q_music"), calibrated.question("q_music").mapped, human)[0] == pytest.approx(0.0, abs=1e-12)


def test_survey_calibration_maps_off_the_train_split_and_notes_what_it_could_not_do():
    inst, _, _ = _setup()
    human = {"disagree": 0.25, "neither": 0.5, "agree": 0.25}
    shifted = {"neither": 0.25, "agree": 0.5, "strongly agree": 0.25}
    targets = HumanTargets()  # overall targets only: no per-cell n, so nothing to rake to
    rows = []
    for qid in ("q_bread", "q_parks", "q_taxes", "q_music", "q_salt"):
        targets.add(qid, {}, Distribution(shares=human))
        for i, (code, share) in enumerate(shifted.items()):
            rows += [(f"r{i}-{k}", {}, qid, code) for k in range(int(share * 4))]
    frame = _frame(rows)
    raw = realism_report(frame, inst, targets)
    calibrated = calibrate_survey(raw, frame, inst, targets, seed=1)
    split = calibrated.calibration["split"]
    assert split == {**split_questions(inst, targets, seed=1).model_dump(), "mapped_on": split["validation"] + split["test"]}
    assert calibrated.calibration["mapped"]["fitted_on"] == split["train"]
    for qid in split["mapped_on"]:
        assert calibrated.question(qid).mapped_distance == pytest.approx(0.0, abs=1e-12)
    assert all(calibrated.question(q).mapped is None for q in split["train"])
    assert calibrated.calibration["reweighted"] is None and calibrated.calibration["notes"][0].startswith("not reweighted")
    assert [q.distance for q in calibrated.questions] == [q.distance for q in raw.questions]
    assert calibrated.metrics()["survey.mean_distance_mapped_raw"] == pytest.approx(0.25)
    # two targeted questions: too few to split, so no mapping, said so
    few = HumanTargets()
    for qid in ("q_bread", "q_parks"):
        few.add(qid, {}, Distribution(shares=human))
    small = calibrate_survey(realism_report(frame, inst, few), frame, inst, few)
    assert small.calibration["split"] is None and small.calibration["mapped"] is None
    assert any(n.startswith("not mapped") for n in small.calibration["notes"])


# ---- the flow and its MLflow rounds ---------------------------------------------------------
def _runs(path, data_dir):
    from personae.experiment import load_experiment, settings_for
    from personae.tracking import Tracker

    exp = load_experiment(path)
    tracker = Tracker(settings_for(exp, data_dir=str(data_dir)), exp.name)
    client = tracker.client()
    parents = client.search_runs([tracker.experiment_id(create=False)], filter_string="tags.`personae.kind` = 'refine'")
    assert len(parents) == 1
    children = client.search_runs([tracker.experiment_id(create=False)], filter_string=f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    return parents[0], sorted(children, key=lambda r: r.info.run_name)


async def test_each_round_is_an_mlflow_child_run(tmp_path):
    from personae.flows.refine import run_refine_experiment

    path = S.write_experiment(tmp_path, {"provider": "fake"})
    inst = S.instrument()
    fake = ScriptedReviser(S.respondents(inst, seed=3))
    outcome = await run_refine_experiment(path, attributes=["attitude_to_change"], data_dir=str(tmp_path / "data"), gateway=Gateway(fake.llm()),
                                          max_rounds=2, patience=1)
    result = outcome.result
    parent, children = _runs(path, tmp_path / "data")
    assert parent.info.run_id == outcome.run_id and parent.info.status == "FINISHED"
    assert [c.info.run_name for c in children] == [f"round-{r.round:02d}" for r in result.rounds]
    assert sorted(c.info.run_id for c in children) == sorted(outcome.round_run_ids)
    for child, r in zip(children, result.rounds, strict=True):
        assert child.data.metrics["refine.validation_distance"] == pytest.approx(r.validation_distance) if r.validation_distance is not None else True
        assert child.data.metrics["refine.kept"] == float(r.kept) and child.data.tags["refine.kept"] == str(r.kept).lower()
    assert any("refine.cell.union_member_yes" in c.data.metrics for c in children[1:])
    metrics = parent.data.metrics
    assert metrics["refine.test_before"] == pytest.approx(result.test_before) and metrics["refine.test_reduction"] >= 0.5
    assert {"refine.test_distance_raw", "refine.test_distance_reweighted"} <= set(metrics)
    assert parent.data.params["refine.test"] == ",".join(result.split.test)
    calibration = json.loads((result.out_dir / "calibration.json").read_text())
    assert [d["question"] for d in calibration["distances"]] == result.split.test
    assert calibration["calibration"]["reweighted"]["max_error"] <= 0.02
    assert outcome.calibrated.question(result.split.test[0]).distance is not None  # raw beside the calibrated columns


@pytest.mark.slow
def test_refine_flow_runs_in_prefect_against_the_test_server(tmp_path, prefect_api_session, monkeypatch):
    from personae.flows.refine import refine_flow
    from personae.testing.server import OpenAITestServer, TestServerConfig

    monkeypatch.setenv("PERSONAE_TEST_JUDGE_KEY", "sk-test-not-a-secret")
    fake = ScriptedReviser(S.respondents(S.instrument(), seed=3))
    with OpenAITestServer(TestServerConfig(), reply=fake.reply) as server:
        path = S.write_experiment(tmp_path, {"provider": "openai", "model": "test-model", "base_url": server.base_url, "api_key_env": "PERSONAE_TEST_JUDGE_KEY"})
        metrics = refine_flow(str(path), ["attitude_to_change"], data_dir=str(tmp_path / "data"), max_rounds=1)
    assert metrics["rounds"] == 1 and metrics["test_reduction"] >= 0.5
    assert fake.prompts
    _, children = _runs(path, tmp_path / "data")
    assert [c.info.run_name for c in children] == ["round-00", "round-01"]


def test_cli_refine_on_the_fake_model(tmp_path):
    from typer.testing import CliRunner

    from personae.cli import app

    path = S.write_experiment(tmp_path, {"provider": "fake"}, members=4, others=2)
    result = CliRunner().invoke(app, ["refine", str(path), "--attribute", "attitude_to_change", "--reviser", "mixture", "--max-rounds", "1",
                                      "--no-track", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "held-out test distance" in result.output and "personas_refined.jsonl" in result.output
    bad = CliRunner().invoke(app, ["refine", str(path), "--attribute", "no_such_attribute", "--no-track", "--data-dir", str(tmp_path / "data")])
    assert bad.exit_code != 0


async def test_an_unusable_reviser_reply_costs_its_cell_not_the_refinement(tmp_path):
    from personae.llm.testing import ScriptedLLM

    inst, model, targets = _setup()
    respondents = model.llm()

    async def script(request):
        if request.schema_name == "PersonaRevisions":
            return "no idea, sorry"
        return await respondents.complete(request)

    gateway = Gateway(ScriptedLLM(script), max_retries=0)
    reviser = LLMReviser(gateway, max_cells=2)
    result, refined = await refine_personas(inst, S.population(4, 2), targets, gateway=gateway, reviser=reviser, config=_config(), out_dir=tmp_path)
    assert reviser.failures == reviser.calls == 2
    assert [(r.round, r.note) for r in result.rounds] == [(0, "baseline"), (1, "no revision proposed")]
    assert result.best_round == 0 and [p.attributes for p in refined] == [p.attributes for p in S.population(4, 2)]
