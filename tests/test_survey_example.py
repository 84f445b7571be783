"""examples/opinion_survey.yaml end to end: over real HTTP against the test server, the CLI, the experiment section, tracking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from personae.errors import ConfigError
from personae.experiment import check_inputs, load_experiment
from personae.flows.survey import log_survey, run_survey_experiment
from personae.survey import load_instrument, read_table
from personae.testing.pytest_plugin import server_gateway
from personae.testing.respondents import ScriptedRespondents
from personae.testing.server import OpenAITestServer, TestServerConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = EXAMPLES / "opinion_survey.yaml"

RULES = {
    "trust_people": {"default": {"agree": 3, "disagree": 2, "neither agree nor disagree": 2, "strongly disagree": 1, "strongly agree": 1, "refused": 0.2}},
    "news_source": {"by": {"gender": {"female": {"social media": 2, "websites and apps": 1}, "male": {"television": 2, "radio": 1}}}},
}


async def test_example_runs_end_to_end_against_the_test_server(tmp_path):
    instrument = load_instrument(EXAMPLES / "survey" / "opinion_instrument.yaml")
    respondents = ScriptedRespondents(instrument, RULES, seed=3)
    with OpenAITestServer(TestServerConfig(), reply=respondents.reply) as server:
        async with server_gateway(server) as gateway:
            outcome = await run_survey_experiment(EXAMPLE, data_dir=str(tmp_path), track=False, gateway=gateway)
        requests = server.request_count
    result, report = outcome.result, outcome.report
    assert (result.respondents, result.batch.completed, result.batch.failed) == (12, 12, 0)
    assert requests >= 12 * 2 * 5  # two-pass: a free-text call and a classification per choice question
    frame = read_table(outcome.files["parquet"])
    assert len(frame) == result.rows and frame["respondent_id"].nunique() == 12
    assert set(frame["mode"]) == {"two_pass"}
    # the scripted opinions arrive intact through HTTP, free text and classification
    news = frame[frame.question_id == "news_source"]
    women = news[news["attr.demographics.gender"] == "female"]["option"]
    men = news[news["attr.demographics.gender"] == "male"]["option"]
    assert set(women) <= {"social media", "websites and apps"} and set(men) <= {"television", "radio"}
    assert len(women) and len(men)
    # the realism report: distances against the synthetic targets, per-cell figures, no collapse
    assert report.target_source.startswith("synthetic")
    for qid in ("trust_people", "ai_jobs", "news_source", "hours_online", "volunteer"):
        assert 0.0 <= report.question(qid).distance <= 1.0
    assert report.question("ai_why").distance is None
    assert 0.0 < report.representativeness < 1.0
    assert {c.cell for c in report.cells} == {"gender=female", "gender=male"}
    assert all(c.distance is not None for c in report.cells)
    assert not report.profiles.collapsed
    html = outcome.files["scorecard_html"].read_text(encoding="utf-8")
    assert "Survey realism" in html and "trust_people" in html
    assert json.loads(outcome.files["realism"].read_text())["instrument"] == "opinion"
    assert outcome.files["plot_survey_distributions"].stat().st_size > 0
    scorecard = json.loads(outcome.files["scorecard_json"].read_text())
    assert scorecard["metrics"]["survey.representativeness"] == pytest.approx(report.representativeness)


def test_log_survey_sends_metrics_params_and_artifacts(tmp_path):
    from personae.graphs.runner import BatchResult
    from personae.survey.realism import ProfileStats, RealismReport
    from personae.survey.run import SurveyResult

    class Run:
        def __init__(self):
            self.params, self.metrics, self.artifacts, self.tags = {}, {}, [], {}

        def log_params(self, params):
            self.params.update(params)

        def log_metrics(self, metrics, step=0):
            self.metrics.update(metrics)

        def log_artifacts(self, paths, artifact_path=None):
            self.artifacts.append((artifact_path, [Path(p).name for p in paths]))

        def set_tags(self, tags):
            self.tags.update(tags)

    report = RealismReport(instrument="x", representativeness=0.8, profiles=ProfileStats(n_respondents=3, n_distinct=1, distinct_share=1 / 3, collapsed=True))
    result = SurveyResult(batch=BatchResult(total=3, completed=3, failed=0, skipped=0, wall_s=0.1), respondents=3, rows=9, table={}, conversations=tmp_path / "c.jsonl")
    run = Run()
    log_survey(run, {"parquet": tmp_path / "answers.parquet", "plot_survey_distance": tmp_path / "d.png"}, report, result, {"survey.mode": "direct"})
    assert run.params == {"survey.mode": "direct"}
    assert run.metrics["survey.representativeness"] == 0.8 and run.metrics["survey.mode_collapse"] == 1.0 and run.metrics["survey.rows"] == 9
    assert run.artifacts == [(None, ["answers.parquet"]), ("plots", ["d.png"])]
    assert run.tags == {"survey.mode_collapse": "true"}


def test_experiment_survey_section_and_a_target_that_does_not_match(tmp_path):
    experiment = load_experiment(EXAMPLE)
    assert experiment.survey.instrument == (EXAMPLES / "survey" / "opinion_instrument.yaml").resolve()
    assert experiment.graph.kind == "interview" and len(experiment.graph.questions) == 8
    check_inputs(experiment)

    folder = tmp_path / "ex"
    shutil.copytree(EXAMPLES / "survey", folder / "survey")
    shutil.copy(EXAMPLE, folder / "opinion_survey.yaml")
    targets = folder / "survey" / "opinion_targets.yaml"
    targets.write_text(targets.read_text().replace("television: 0.34", "telly: 0.34"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        check_inputs(load_experiment(folder / "opinion_survey.yaml"))
    assert info.value.file == str(targets) and info.value.field == "questions.news_source.overall.distribution.telly"


def test_cli_survey_direct_on_the_fake_model(cli_env, tmp_path):
    result = CliRunner().invoke(cli_env, ["survey", str(EXAMPLE), "--mode", "direct", "--no-track"])
    assert result.exit_code == 0, result.output
    assert "representativeness" in result.output and "answers.parquet" in result.output
    assert "post-hoc calibration" in result.output  # the example has targets: reweighted and mapped beside raw
    plain = CliRunner().invoke(cli_env, ["survey", str(EXAMPLE), "--mode", "direct", "--no-track", "--no-calibration", "-n", "4"])
    assert plain.exit_code == 0, plain.output
    assert "post-hoc" not in plain.output and "answer profiles of 4" in " ".join(plain.output.split())


async def test_survey_with_targets_reports_calibration_beside_raw(tmp_path):
    instrument = load_instrument(EXAMPLES / "survey" / "opinion_instrument.yaml")
    respondents = ScriptedRespondents(instrument, RULES, seed=3)
    with OpenAITestServer(TestServerConfig(), reply=respondents.reply) as server:
        async with server_gateway(server) as gateway:
            calibrated = await run_survey_experiment(EXAMPLE, data_dir=str(tmp_path), track=False, gateway=gateway, mode="direct", respondents=6)
            calls = server.request_count
            written = {k: calibrated.files[k].read_text(encoding="utf-8") for k in ("realism", "realism_csv", "scorecard_html", "scorecard_json")}
            # the same folder again without calibration: the respondents are done, so no model call and the same answers
            plain = await run_survey_experiment(EXAMPLE, data_dir=str(tmp_path), track=False, gateway=gateway, mode="direct", respondents=6, calibrate=False)
            assert server.request_count == calls
    report, raw = calibrated.report, plain.report
    assert report.n_respondents == 6 and raw.calibration is None
    assert all(q.reweighted is None and q.mapped is None for q in raw.questions)
    # raw figures are untouched by calibration
    strip = {"reweighted", "reweighted_distance", "mapped", "mapped_distance"}
    assert [q.model_dump(exclude=strip) for q in report.questions] == [q.model_dump(exclude=strip) for q in raw.questions]
    assert report.metrics("s")["s.representativeness"] == raw.metrics("s")["s.representativeness"]
    # reweighted: raked to the targets' gender marginals, on every targeted question
    assert set(report.calibration["reweighted"]["targets"]) == {"demographics.gender"}
    for qid in ("trust_people", "ai_jobs", "news_source", "hours_online", "volunteer"):
        assert 0.0 <= report.question(qid).reweighted_distance <= 1.0
    # mapped: learned on the seeded train split (seed 7: trust_people is the ordinal train question), shown only off it
    split = report.calibration["split"]
    assert split["seed"] == 7 and split["train"] == ["trust_people", "hours_online", "volunteer"]
    assert report.calibration["mapped"]["fitted_on"] == ["trust_people"]
    assert 0.0 <= report.question("ai_jobs").mapped_distance <= 1.0
    assert all(report.question(q).mapped is None for q in split["train"])
    # every output shows it, labelled as post-hoc
    realism = json.loads(written["realism"])
    assert realism["calibration"]["split"]["train"] == split["train"]
    csv_rows = written["realism_csv"].splitlines()
    assert csv_rows[0].endswith("reweighted_distance,mapped_distance,split") and len(csv_rows) == 1 + len(instrument.questions)
    assert "Post-hoc calibration" in written["scorecard_html"] and "Post-hoc calibration" not in plain.files["scorecard_html"].read_text(encoding="utf-8")
    metrics = json.loads(written["scorecard_json"])["metrics"]
    assert metrics["survey.mean_distance"] == pytest.approx(raw.mean_distance)
    assert {"survey.mean_distance_reweighted", "survey.mean_distance_mapped", "survey.mean_distance_mapped_raw", "survey.q.ai_jobs.mapped_distance"} <= set(metrics)
