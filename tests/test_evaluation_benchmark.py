"""A benchmark plugs into the judged evaluation: PersonaGym's personas, questions and rubrics as they are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personae.errors import ConfigError
from personae.evaluation import JudgedConfig, evaluate_judged
from personae.evaluation.benchmark import load_personas, load_questions
from personae.evaluation.config import JudgeReliabilityConfig
from personae.evaluation.rubrics import builtin_rubric, load_rubrics, parse_rubric_text
from personae.jsonl import write_jsonl
from personae.llm import Gateway
from personae.llm.base import LLMRequest
from personae.llm.testing import ScriptedLLM
from personae.models import Persona

PG = Path(__file__).parent / "data" / "personagym"
PERSONAS = PG / "code" / "personas.py"
QUESTIONS = PG / "questions" / "mini"
RUBRICS = PG / "rubrics"
BEEKEEPER = "A 45-year-old beekeeper from Slovenia who restores old motorcycles"


def test_personagym_files_load_as_they_are():
    personas = load_personas(PERSONAS)
    assert [p.description for p in personas][0] == BEEKEEPER and len(personas) == 3
    assert personas[0].name == BEEKEEPER
    bank = load_questions(QUESTIONS, personas)
    mine = bank.for_persona(personas[0])
    assert set(mine) == {"expected_action", "toxicity_control", "linguistic_habits", "persona_consistency", "action_justification"}
    assert all(len(q) == 2 for q in mine.values())
    rubrics = load_rubrics(RUBRICS)
    ea = rubrics["expected_action"]
    assert ea.title == "Expected Action in Given Setting" and ea.criterion.startswith("The actions the persona describes")
    assert list(ea.scores) == [1, 2, 3, 4, 5]
    assert ea.scores[5].examples[0].startswith("I would hand her a spoon") and not rubrics["toxicity_control"].examples()
    assert "{persona}" not in ea.criterion and "Evaluation Form" not in ea.model_dump_json()


def test_persona_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("# personas\nA 30-year-old baker from Lyon\n\nA 70-year-old painter from Oslo\n")
    (tmp_path / "p.json").write_text(json.dumps(["A 30-year-old baker from Lyon", {"name": "Ada", "age": 36}]))
    write_jsonl(tmp_path / "p.jsonl", [Persona(name="Ada", age=36)])
    assert [p.name for p in load_personas(tmp_path / "p.txt")] == ["A 30-year-old baker from Lyon", "A 70-year-old painter from Oslo"]
    assert [p.name for p in load_personas(tmp_path / "p.json")] == ["A 30-year-old baker from Lyon", "Ada"]
    assert load_personas(tmp_path / "p.jsonl")[0].age == 36
    # the .py file is read, never run
    (tmp_path / "evil.py").write_text("import os\nos.system('touch pwned')\npersonas = ['A quiet librarian']\n")
    assert [p.name for p in load_personas(tmp_path / "evil.py")] == ["A quiet librarian"] and not (tmp_path / "pwned").exists()
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no list of persona strings"):
        load_personas(tmp_path / "none.py")


def test_rubric_and_question_errors_name_file_and_field(tmp_path):
    text = (RUBRICS / "Toxicity.txt").read_text().replace("Score = 3:", "Score 3 was removed:")
    (tmp_path / "Toxicity.txt").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_rubrics(tmp_path / "Toxicity.txt")
    assert "Toxicity.txt" in str(err.value) and "field: Score = 3" in str(err.value)
    (tmp_path / "Humour.txt").write_text((RUBRICS / "Toxicity.txt").read_text())
    with pytest.raises(ConfigError, match="unknown evaluation task") as err:
        load_rubrics(tmp_path / "Humour.txt")
    assert "Humour.txt" in str(err.value)
    (tmp_path / "r.yaml").write_text("task: Expected Action\nscores:\n  1: bad\n  2: poor\n  3: fair\n  5: {description: best, examples: [an example]}\n")
    with pytest.raises(ConfigError) as err:
        load_rubrics(tmp_path / "r.yaml")
    assert "r.yaml" in str(err.value) and "scores" in str(err.value) and "missing [4]" in str(err.value)

    personas = load_personas(PERSONAS)
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / f"{BEEKEEPER}.json").write_text(json.dumps({"Expected Action": "not a list"}))
    with pytest.raises(ConfigError) as err:
        load_questions(folder, personas)
    assert f"{BEEKEEPER}.json" in str(err.value) and "field: Expected Action" in str(err.value)
    (folder / f"{BEEKEEPER}.json").write_text(json.dumps({"Expected Action": ["ok?", ""]}))
    with pytest.raises(ConfigError, match=r"Expected Action\[1\]"):
        load_questions(folder, personas)
    (folder / f"{BEEKEEPER}.json").write_text(json.dumps({"Expected Action": ["What do you do?"]}))
    with pytest.raises(ConfigError, match="no questions for 2 persona") as err:
        load_questions(folder, personas)
    assert "night-shift nurse" in str(err.value)


def test_packaged_rubrics_read_back_as_data():
    persona = Persona(name="Rosa", linguistic_habits=["says 'lovely'"])
    rubric = builtin_rubric("linguistic_habits", persona)
    assert list(rubric.scores) == [5, 4, 3, 2, 1] and "says 'lovely'" in rubric.criterion
    again = parse_rubric_text("Is it good?\n1 — bad\n2 — poor\n3 — fair\n4 — good\n5 — very good", task="expected_action")
    assert again.criterion == "Is it good?" and again.ordered("reversed")[0] == (5, again.scores[5])


def _recording_judge(request: LLMRequest) -> str:
    if request.schema_name == "SpeakerChoice":
        return json.dumps({"choice": "A"})
    return json.dumps({"rationale": "In character for the most part, a plausible reply.", "score": 4, "confidence": 0.8})


async def test_external_questions_and_rubrics_reach_the_models():
    judge = ScriptedLLM(_recording_judge, model="judge-x")
    persona_model = ScriptedLLM(lambda request: "In character: I keep bees.")
    gateway = Gateway({"default": persona_model, "judge_a": judge, "judge_b": ScriptedLLM(_recording_judge, model="judge-y")})
    checks = JudgeReliabilityConfig(calibration_sample=0, speaker_sample=0, order_swap_sample=3)
    config = JudgedConfig(enabled=True, questions=QUESTIONS, rubrics=RUBRICS, questions_per_task=1, reliability=checks)
    report = await evaluate_judged(load_personas(PERSONAS), config=config, gateway=gateway, embedder=None)
    assert report.n_items == 3 * 5 * 1 and report.persona_score == 4.0
    assert report.questions_source == str(QUESTIONS) and report.rubrics_source == str(RUBRICS)
    assert all(not i.environments for i in report.items)  # no environment selection, no question writing
    assert "evaluator" not in gateway.usage.roles
    asked = {r.messages[-1].content for r in persona_model.requests}
    assert "On a Country Road, your motorcycle stalls twenty kilometres from home. Walk me through the steps you take." not in asked  # first question only
    assert any(q.startswith("At a Farmers Market, a customer says your honey") for q in asked)
    prompts = [r.messages[-1].content for r in judge.requests]
    ea = next(p for p in prompts if "Task being evaluated: Expected Action in Given Setting" in p)
    assert "Example of a response scoring 5: <<< I would hand her a spoon" in ea and "Score = " not in ea
    # the order-swap check re-judges the run's answers on the same external rubrics, their scores listed 5 → 1
    orders = [[int(line[0]) for line in p.split("Rubric:\n", 1)[1].splitlines() if line[:1].isdigit()] for p in prompts]
    assert orders.count([1, 2, 3, 4, 5]) == 15 and orders.count([5, 4, 3, 2, 1]) == 3
    assert report.reliability.get("judge_a").order_swap.n == 3 and report.reliability.get("judge_a").calls == 3


def test_cli_runs_the_personagym_fixture_with_no_conversations(tmp_path, cli_env):
    out = tmp_path / "out"
    args = ["evaluate", "--judged", "--personas", str(PERSONAS), "--questions", str(QUESTIONS), "--rubrics", str(RUBRICS), "--out", str(out)]
    result = CliRunner().invoke(cli_env, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "resolve to one model (fake:fake-chat)" in result.output.replace("\n", " ")
    data = json.loads((out / "scorecard.json").read_text())
    assert data["n_conversations"] == 0 and data["judged"]["n_items"] == 3 * 5 * 2
    assert data["judged"]["agreement"] is None and not any(k.startswith("judged.agreement.") for k in data["metrics"])
    assert {j["judge"] for j in data["judged"]["reliability"]["judges"]} == {"judge_a", "judge_b"}
    html = (out / "scorecard.html").read_text()
    assert "Not reported: fewer than two judges on distinct models" in html and "Judge reliability" in html

    # routed to two models from the command line, the judges agree or not, and it is reported
    args += ["--judge-model", "fake-a", "--judge-model", "judge_b=fake-b", "--out", str(tmp_path / "two")]
    result = CliRunner().invoke(cli_env, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "two" / "scorecard.json").read_text())
    assert data["judged"]["judge_models"] == {"judge_a": "fake:fake-a", "judge_b": "fake:fake-b"}
    assert "judged.agreement.krippendorff_alpha" in data["metrics"] and not data["judged"]["warnings"]


def test_cli_bad_benchmark_input_is_one_error_line_and_exit_2(tmp_path, cli_env, monkeypatch, capsys):
    from personae.cli import main

    rubrics = tmp_path / "rubrics"
    rubrics.mkdir()
    (rubrics / "Toxicity.txt").write_text((RUBRICS / "Toxicity.txt").read_text().replace("Score = 4:", "Score four:"))

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["personae", "evaluate", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        return exit_info.value.code, capsys.readouterr().err

    code, err = run("--judged", "--personas", str(PERSONAS), "--questions", str(QUESTIONS), "--rubrics", str(rubrics), "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith("error: ") and "Toxicity.txt" in err and "Score = 4" in err
    assert not (tmp_path / "o").exists()  # nothing half-written
    code, err = run("--personas", str(PERSONAS))
    assert code == 2 and "nothing to evaluate" in err
    code, err = run("--personas", str(PERSONAS), "--questions", str(QUESTIONS))
    assert code == 2 and "--questions applies to the judged evaluation" in err
    code, err = run("--judged", "--personas", str(PERSONAS), "--judge-model", "judge_z=m")
    assert code == 2 and "judge_z" in err


def test_experiment_file_paths_of_the_judged_inputs_are_relative_to_it(tmp_path, monkeypatch):
    import yaml

    from personae.experiment import load_experiment

    monkeypatch.chdir("/")
    (tmp_path / "personas.jsonl").write_text(json.dumps({"name": "Ana"}) + "\n")
    judged = {"enabled": True, "questions": "bench/questions", "rubrics": "bench/rubrics", "reliability": {"calibration": "cal.yaml"}}
    data = {"name": "exp", "models": {"default": {"provider": "fake"}}, "personas_file": "personas.jsonl",
            "scenarios": [{"name": "chat", "roles": [{"name": "a"}, {"name": "b"}]}], "graph": {"kind": "dyad"}, "evaluation": {"judged": judged}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(data))
    config = load_experiment(tmp_path / "exp.yaml").evaluation.judged
    assert config.questions == tmp_path / "bench" / "questions" and config.rubrics == tmp_path / "bench" / "rubrics"
    assert config.reliability.calibration == tmp_path / "cal.yaml"


def test_a_repeated_persona_id_in_the_jsonl_is_an_error_as_in_every_persona_reader(tmp_path):
    ada = Persona(id="p-ada", name="Ada", age=36)
    write_jsonl(tmp_path / "p.jsonl", [ada, ada.model_copy(update={"age": 37})])
    with pytest.raises(ConfigError, match="duplicate id") as err:
        load_personas(tmp_path / "p.jsonl")
    assert "p.jsonl:2" in str(err.value)
