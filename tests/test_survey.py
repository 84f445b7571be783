"""Surveys: instruments, elicitation on the scripted respondent model, the tidy table, human targets, realism."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from personae.errors import ConfigError
from personae.llm import Gateway
from personae.models import Persona
from personae.survey import load_instrument, next_question, option_order, pipe_text, read_table, run_survey
from personae.survey.instrument import Instrument
from personae.survey.realism import distance, realism_report
from personae.survey.targets import load_targets
from personae.testing.respondents import ScriptedRespondents

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "survey" / "opinion_instrument.yaml"

SMALL = """
name: small
randomize_options: true
questions:
  - id: trust
    type: likert
    text: Most people can be trusted.
    options: [strongly disagree, disagree, neither, agree, strongly agree, {code: refused, label: prefer not to say, refusal: true}]
    skip:
      - {when: {trust: [refused]}, to: end}
  - id: why
    type: text
    text: "You said '{{ trust }}'. Why?"
    ask_if: {trust: [agree, strongly agree]}
  - id: news
    type: single
    text: Where do you get your news?
    options: [tv, papers, online]
  - id: hours
    type: numeric
    text: Hours online a day?
    min: 0
    max: 4
    integer: true
"""


def _write(tmp_path: Path, text: str, name: str = "instrument.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small(tmp_path) -> Instrument:
    return load_instrument(_write(tmp_path, SMALL))


def _personas(n: int) -> list[Persona]:
    return [
        Persona(name=f"Person {i}", attributes={"demographics.age_band": "18-24" if i % 2 else "55-64", "demographics.gender": "female" if i < n / 2 else "male"})
        for i in range(n)
    ]


# ---- instruments ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (("to: end}", "to: nowhere}"), "questions[0].skip[0].to", "does not exist"),
        (("[tv, papers, online]", "[tv, papers, TV]"), "questions[2].options", "twice"),
        (("You said '{{ trust }}'", "You said '{{ news }}'"), "questions[1].text", "asked later"),
        (("ask_if: {trust: [agree, strongly agree]}", "ask_if: {trust: [agree, maybe]}"), "questions[1].ask_if.trust", "does not have"),
        (("min: 0\n    max: 4", "min: 5\n    max: 4"), "questions[3].max", "min >= max"),
    ],
)
def test_bad_instrument_gives_one_error_naming_file_and_field(tmp_path, edit, field, words):
    path = _write(tmp_path, SMALL.replace(*edit))
    with pytest.raises(ConfigError) as info:
        load_instrument(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert words in info.value.message
    assert str(path) in str(info.value)


def test_example_instrument_loads():
    instrument = load_instrument(EXAMPLE)
    assert [q.type for q in instrument.questions] == ["likert", "likert", "text", "single", "ranking", "numeric", "multiple", "single"]


def test_option_order_is_seeded_per_respondent_and_keeps_scales_and_refusals(small):
    trust, news = small.question("trust"), small.question("news")
    canonical = ["strongly disagree", "disagree", "neither", "agree", "strongly agree"]
    orders = {tuple(option_order(trust, small, seed=3, respondent_id=f"r{i}")) for i in range(20)}
    assert orders == {(*canonical, "refused"), (*reversed(canonical), "refused")}  # a scale stays a scale
    assert option_order(news, small, 3, "r1") == option_order(news, small, 3, "r1")
    assert len({tuple(option_order(news, small, 3, f"r{i}")) for i in range(20)}) > 1
    assert {tuple(option_order(news, small, s, "r1")) for s in range(20)} != {tuple(option_order(news, small, 0, "r1"))}
    fixed = small.model_copy(update={"randomize_options": False})
    assert option_order(news, fixed, 3, "r1") == ["tv", "papers", "online"]


def test_piping_and_skip_logic(small):
    assert pipe_text(small.question("why"), {"trust": ["agree"]}, small) == "You said 'agree'. Why?"
    question, skipped = next_question(small, {"trust": ["agree"]}, ["trust"])
    assert (question.id, skipped) == ("why", [])
    question, skipped = next_question(small, {"trust": ["disagree"]}, ["trust"])  # ask_if fails
    assert (question.id, skipped) == ("news", ["why"])
    question, skipped = next_question(small, {"trust": ["refused"]}, ["trust"])  # to: end
    assert (question, skipped) == (None, ["why", "news", "hours"])


# ---- elicitation on the scripted respondent model ------------------------------
RULES = {
    "trust": {
        "default": {"agree": 3, "disagree": 1},
        "by": {"age_band": {"18-24": {"strongly disagree": 1, "refused": 1}}},
    },
    "news": {"by": {"demographics.gender": {"female": {"online": 1}, "male": {"tv": 1}}}},
}


def test_scripted_respondents_document_their_probabilities(small):
    model = ScriptedRespondents(small, RULES, midpoint_bias=0.5)
    assert model.probabilities("trust", {"demographics.age_band": "55-64"}) == {"agree": 0.75, "disagree": 0.25}
    assert model.probabilities("trust", {"demographics.age_band": "18-24"}) == {"strongly disagree": 0.5, "refused": 0.5}
    assert model.probabilities("hours", {}) == {str(v): 0.2 for v in range(5)}
    population = [{"age_band": "55-64"}, {"age_band": "55-64"}]
    assert model.expected_distribution("trust", population) == {"agree": 0.75, "disagree": 0.25}
    assert model.expected_distribution("trust", population, mode="direct") == {"agree": 0.375, "disagree": 0.125, "neither": 0.5}


async def test_direct_and_two_pass_answer_as_scripted(tmp_path, small):
    model = ScriptedRespondents(small, RULES, seed=1, midpoint_bias=0.6)
    personas = _personas(6)
    tables = {}
    for mode in ("direct", "two_pass"):
        gateway = Gateway(model.llm())
        result, frame = await run_survey(small, personas, gateway=gateway, out_dir=tmp_path / mode, mode=mode, seed=5)
        assert (result.batch.completed, result.batch.failed) == (6, 0)
        tables[mode] = frame
    for mode, frame in tables.items():
        for persona in personas:
            rows = frame[(frame.respondent_id == persona.id) & (frame.question_id == "trust")]
            drawn = model.draw("trust", persona.attributes, direct=mode == "direct")
            assert rows["option"].tolist() == drawn
            if drawn == ["refused"]:  # skip rule: the survey ends
                continue
            news = frame[(frame.respondent_id == persona.id) & (frame.question_id == "news")]["option"].tolist()
            assert news == (["online"] if persona.attributes["demographics.gender"] == "female" else ["tv"])
    two_pass = tables["two_pass"]
    assert two_pass.loc[two_pass.question_id == "trust", "raw_text"].str.startswith("I would say").all()
    assert set(two_pass.loc[two_pass.question_id == "trust", "status"]) <= {"answered", "refused"}
    mid = {m: int((t[t.question_id == "trust"].option == "neither").sum()) for m, t in tables.items()}
    assert mid["two_pass"] == 0  # "neither" has probability 0 in the rules
    assert mid["direct"] >= 1  # the scripted central-tendency bias of forced choice

    # skip logic in the run: refusers stop after the first question, disagreeing ones skip "why"
    for persona in personas:
        asked = two_pass[two_pass.respondent_id == persona.id].sort_values("position")["question_id"].tolist()
        first = model.draw("trust", persona.attributes)[0]
        if first == "refused":
            assert asked == ["trust"]
        elif first in ("agree", "strongly agree"):
            assert asked == ["trust", "why", "news", "hours"]
            why = two_pass[(two_pass.respondent_id == persona.id) & (two_pass.question_id == "why")].iloc[0]
            assert why["question_text"] == f"You said '{first}'. Why?"  # piped
        else:
            assert asked == ["trust", "news", "hours"]


async def test_tidy_table_round_trips_parquet_and_csv_with_recorded_option_order(tmp_path, small):
    model = ScriptedRespondents(small, RULES, seed=2)
    personas = _personas(4)
    result, frame = await run_survey(small, personas, gateway=Gateway(model.llm()), out_dir=tmp_path, mode="two_pass", seed=9)
    for path in (result.table["parquet"], result.table["csv"]):
        back = read_table(path)
        assert len(back) == len(frame) == result.rows
        assert list(back.columns) == list(frame.columns)
        assert back["option"].fillna("").tolist() == frame["option"].fillna("").tolist()
        assert back["attr.demographics.age_band"].astype(str).tolist() == frame["attr.demographics.age_band"].astype(str).tolist()
    checked = 0
    for persona in personas:
        for qid in ("trust", "news"):
            rows = frame[(frame.respondent_id == persona.id) & (frame.question_id == qid)]
            if not rows.empty:  # news is not asked after a refusal (skip to end)
                assert rows.iloc[0]["option_order"] == "|".join(option_order(small.question(qid), small, 9, persona.id))
                checked += 1
    assert checked > len(personas)
    hours = frame[frame.question_id == "hours"]
    assert hours["option"].isna().all() and hours["value"].between(0, 4).all()

    # a rerun skips every finished respondent and writes the same table
    again, frame2 = await run_survey(small, personas, gateway=Gateway(model.llm()), out_dir=tmp_path, mode="two_pass", seed=9)
    assert (again.batch.skipped, again.batch.completed) == (4, 0)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True), frame2.reset_index(drop=True))
    # another mode in the same folder is a different run, never a replay of these answers
    direct, frame3 = await run_survey(small, personas, gateway=Gateway(model.llm()), out_dir=tmp_path, mode="direct", seed=9)
    assert (direct.batch.skipped, direct.batch.completed) == (0, 4)
    assert set(frame3["mode"]) == {"direct"}


# ---- human targets ---------------------------------------------------------------
def test_microdata_targets_map_to_the_taxonomy(tmp_path, small):
    path = tmp_path / "people.csv"
    path.write_text(
        "respondent_id,age_band,trust,news,hours,w\n"
        "1,18-24,agree,tv,2,1\n2,18-24,disagree,online,3,1\n3,55-64,agree,tv,,2\n4,55-64,Prefer not to say,papers,1,1\n",
        encoding="utf-8",
    )
    from personae.population.taxonomy import load_taxonomy
    from personae.survey.targets import microdata_targets

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    targets = microdata_targets(frame, small, load_taxonomy(), file=str(path), weight="w")
    assert targets.overall("trust").shares == {"agree": 0.6, "disagree": 0.2, "refused": 0.2}
    assert targets.cells["trust"]["age_band=18-24"].shares == {"agree": 0.5, "disagree": 0.5}
    assert targets.cell_attributes["trust"]["age_band=55-64"] == {"demographics.age_band": "55-64"}
    assert targets.overall("hours").shares == {"2": 1 / 3, "3": 1 / 3, "1": 1 / 3}  # the empty answer is left out

    with pytest.raises(ConfigError, match="no question and no taxonomy attribute") as info:
        load_targets(path, small)  # without weight="w", the column "w" maps to nothing
    assert info.value.field == "column 'w'"


@pytest.mark.parametrize(
    ("csv", "field", "words"),
    [
        ("respondent_id,agegroup,trust\n1,18-24,agree\n", "column 'agegroup'", "no question and no taxonomy attribute"),
        ("respondent_id,age_band,trust\n1,18-24,sort of\n", "column 'trust' (row 2)", "not an option"),
        ("respondent_id,age_band,trust\n1,teen,agree\n", "column 'age_band' (row 2)", "value the taxonomy does not have"),
    ],
)
def test_microdata_mapping_errors_name_file_and_column(tmp_path, small, csv, field, words):
    path = tmp_path / "people.csv"
    path.write_text(csv, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_targets(path, small)
    assert (info.value.file, info.value.field) == (str(path), field)
    assert words in info.value.message


def test_aggregate_targets_yaml_and_csv(tmp_path, small):
    yaml_path = _write(tmp_path, """
kind: aggregate
source: synthetic
questions:
  trust:
    overall: {n: 100, distribution: {agree: 60, disagree: 40}}
    cells:
      - {where: {gender: female}, n: 50, distribution: {agree: 0.5, disagree: 0.5}}
""", "targets.yaml")
    targets = load_targets(yaml_path, small)
    assert targets.source == "synthetic"
    assert targets.overall("trust").shares == {"agree": 0.6, "disagree": 0.4}
    assert targets.cells["trust"]["gender=female"].n == 50
    csv_path = tmp_path / "targets.csv"
    csv_path.write_text("question,option,share,gender\ntrust,agree,0.7,\ntrust,disagree,0.3,\ntrust,agree,0.2,male\ntrust,disagree,0.8,male\n", encoding="utf-8")
    targets = load_targets(csv_path, small)
    assert targets.overall("trust").shares == {"agree": 0.7, "disagree": 0.3}
    assert targets.cells["trust"]["gender=male"].shares == {"agree": 0.2, "disagree": 0.8}

    bad = _write(tmp_path, "kind: aggregate\nquestions:\n  trust:\n    overall: {distribution: {agree: 1, mostly: 2}}\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_targets(bad, small)
    assert (info.value.file, info.value.field) == (str(bad), "questions.trust.overall.distribution.mostly")
    missing = _write(tmp_path, "kind: aggregate\nquestions:\n  nope:\n    overall: {distribution: {a: 1}}\n", "missing.yaml")
    with pytest.raises(ConfigError, match="does not have") as info:
        load_targets(missing, small)
    assert info.value.field == "questions.nope"


# ---- realism: hand-computed cases -------------------------------------------------
def _frame(rows: list[tuple[str, str, str | None, float | None, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"respondent_id": r, "question_id": q, "option": o, "value": v, "status": s, "position": 0, "rank": None} for r, q, o, v, s in rows]
    )


def test_distances_on_hand_computed_cases(small):
    trust, news = small.question("trust"), small.question("news")
    assert distance(trust, {"strongly disagree": 1.0}, {"strongly agree": 1.0}) == (1.0, "wasserstein")
    # positions {0: .5, 4: .5} vs {1: .5, 3: .5}: W1 = .5·1 + .5·1 = 1, over a scale of length 4
    assert distance(trust, {"strongly disagree": 0.5, "strongly agree": 0.5}, {"disagree": 0.5, "agree": 0.5}) == (0.25, "wasserstein")
    # refusals are off the scale: dropped and renormalised
    assert distance(trust, {"agree": 0.5, "refused": 0.5}, {"agree": 1.0})[0] == 0.0
    assert distance(news, {"tv": 1.0}, {"online": 1.0}) == (1.0, "jensen_shannon")
    # JS distance of (.5, .5) and (1, 0), base 2: M = (.75, .25)
    expected = math.sqrt(0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75))
    assert distance(news, {"tv": 0.5, "online": 0.5}, {"tv": 1.0})[0] == pytest.approx(expected, abs=1e-12)
    assert distance(small.question("hours"), {"0": 1.0}, {"4": 1.0})[0] == 1.0  # numeric: over max - min


def test_realism_report_figures_exact(small, tmp_path):
    frame = _frame([
        ("a", "trust", "strongly disagree", None, "answered"),
        ("b", "trust", "strongly agree", None, "answered"),
        ("c", "trust", "refused", None, "refused"),
        ("d", "trust", None, None, "unclassified"),
        ("a", "news", "tv", None, "answered"),
        ("b", "news", "online", None, "answered"),
    ])
    targets = load_targets(_write(tmp_path, """
questions:
  trust: {overall: {distribution: {disagree: 0.5, agree: 0.5}}}
  news: {overall: {distribution: {tv: 1}}}
""", "t.yaml"), small)
    report = realism_report(frame, small, targets)
    trust, news = report.question("trust"), report.question("news")
    assert (trust.n_asked, trust.n_answered) == (4, 3)
    assert trust.distance == 0.25  # refusal left out: positions {0: .5, 4: .5} vs {1: .5, 3: .5}
    assert (trust.variance, trust.human_variance, trust.variance_ratio) == (4.0, 1.0, 4.0)
    assert (trust.extreme_rate, trust.human_extreme_rate) == (1.0, 0.0)
    assert (trust.midpoint_rate, trust.acquiescence, trust.human_acquiescence) == (0.0, 0.5, 0.5)
    assert trust.refusal_rate == 0.5  # c refused by option, d unclassified
    expected_news = math.sqrt(0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75))
    assert news.distance == pytest.approx(expected_news, abs=1e-12)
    assert report.representativeness == pytest.approx(1 - (0.25 + expected_news) / 2, abs=1e-12)
    assert report.profiles.n_distinct == 4 and not report.profiles.collapsed
    metrics = report.metrics()
    assert metrics["survey.q.trust.distance"] == 0.25 and metrics["survey.mode_collapse"] == 0.0


def test_mode_collapse_is_flagged_when_everyone_answers_alike(small):
    rows = []
    for r in ("a", "b", "c"):
        rows += [(r, "trust", "agree", None, "answered"), (r, "news", "tv", None, "answered"), (r, "hours", None, 2.0, "answered")]
    report = realism_report(_frame(rows), small)
    assert report.profiles.collapsed and report.profiles.n_distinct == 1 and report.profiles.largest_share == 1.0
    assert report.profiles.identical_questions == ["hours", "news", "trust"]
    assert any("mode collapse" in w for w in report.warnings)
    assert report.metrics()["survey.mode_collapse"] == 1.0
    varied = realism_report(_frame([*rows[:-1], ("c", "hours", None, 3.0, "answered")]), small)
    assert not varied.profiles.collapsed and varied.profiles.n_distinct == 2
    # nobody's answer to news could be classified: that is not everyone answering alike
    unclassified = [(r, q, o, v, "unclassified" if q == "news" else st) for r, q, o, v, st in rows]
    unclassified = [(r, q, None if q == "news" else o, v, st) for r, q, o, v, st in unclassified]
    assert realism_report(_frame(unclassified), small).profiles.identical_questions == ["hours", "trust"]


async def test_a_failed_respondent_resumes_from_its_checkpoint(tmp_path, small):
    """A model failing mid-survey records the respondent failed; the rerun asks only what is left."""
    from personae.errors import ModelCallError
    from personae.llm.testing import ScriptedLLM

    scripted = ScriptedRespondents(small, {"trust": {"default": {"agree": 1}}})
    asked: list[str] = []
    broken = {"on": True}

    def script(request):
        qid = next((m.content.split("Survey question ", 1)[1].split(" ", 1)[0] for m in request.messages if "Survey question " in m.content), None)
        asked.append(qid)
        if broken["on"] and qid == "news":
            raise ModelCallError("the model is down (scripted)", retryable=False)
        return scripted.answer([m.model_dump() for m in request.messages], request.schema_name)

    personas = _personas(1)
    gateway = Gateway(ScriptedLLM(script), max_retries=0)
    first, frame = await run_survey(small, personas, gateway=gateway, out_dir=tmp_path, mode="direct", seed=1)
    assert (first.batch.completed, first.batch.failed) == (0, 1) and frame.empty
    assert asked == ["trust", "why", "news"]
    broken["on"], asked[:] = False, []
    again, frame = await run_survey(small, personas, gateway=gateway, out_dir=tmp_path, mode="direct", seed=1, retry_failed=True)
    assert (again.batch.completed, again.batch.failed) == (1, 0)
    assert asked == ["news", "hours"]  # trust and why came from the checkpoint
    assert frame.sort_values("position")["question_id"].tolist() == ["trust", "why", "news", "hours"]


async def test_a_runaway_reply_is_kept_in_the_table_but_clipped_in_later_prompts(tmp_path, small):
    """A small model looping on one question must not overflow the context of every later one."""
    from personae.llm.testing import ScriptedLLM

    scripted = ScriptedRespondents(small, {"trust": {"default": {"agree": 1}}})
    runaway = "environment, " * 300
    prompts: dict[str, str] = {}

    def script(request):
        qid = next((m.content.split("Survey question ", 1)[1].split(" ", 1)[0] for m in request.messages if "Survey question " in m.content), None)
        prompts[qid] = "\n".join(m.content for m in request.messages)
        if qid == "why":
            return runaway
        return scripted.answer([m.model_dump() for m in request.messages], request.schema_name)

    result, frame = await run_survey(small, _personas(1), gateway=Gateway(ScriptedLLM(script), max_retries=0), out_dir=tmp_path, mode="direct", seed=1)
    assert (result.batch.completed, result.batch.failed) == (1, 0)
    assert frame.loc[frame.question_id == "why", "raw_text"].iloc[0] == runaway.strip()
    assert "environment, environment" in prompts["news"] and prompts["news"].count("environment") <= 30
    assert len(prompts["news"]) < len(runaway)
