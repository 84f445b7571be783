"""Surveys against real people: instruments, human targets and the realism report.

* :mod:`~personae.survey.instrument` — typed questions, option order, piping, skip logic.
* :mod:`~personae.survey.elicit` — direct and two-pass elicitation of one answer.
* :mod:`~personae.survey.graph` — the survey graph (the interview's state, one step per question).
* :mod:`~personae.survey.run` — :func:`run_survey`: one LangGraph run per respondent, the tidy table.
* :mod:`~personae.survey.targets` — human answers as microdata or aggregates, mapped to the taxonomy.
* :mod:`~personae.survey.realism` — distances to the human distribution and response-style figures.
* :mod:`~personae.survey.split` — train/validation/test splits of the questions (seeded, recorded).
* :mod:`~personae.survey.revise` — the training view a reviser sees (train questions only) and the revisers.
* :mod:`~personae.survey.refine` — :func:`refine_personas`: refinement toward human answers (PEvo).
* :mod:`~personae.survey.calibration` — raking weights and a train-fitted ordinal mapping, beside raw.

Nothing here imports Prefect or MLflow: :mod:`personae.flows.survey` and
:mod:`personae.flows.refine` run and track it.

For refinement toward human answers (PEvo) and calibration, the pieces to build on:
``run_survey(instrument, personas, ...)`` surveys any list of personas (keyed by the
instrument and mode, so a refined population is a new run); ``realism_report(table,
instrument, targets)`` scores it (``RealismReport.question(qid).distance``, ``.cells`` per
demographic cell, ``.metrics()`` flat for MLflow rounds); ``HumanTargets.cells[qid][cell]``
holds the human shares; :class:`personae.testing.respondents.ScriptedRespondents` gives a
respondent model whose right answer is known (``expected_distribution``).
"""

from personae.survey.calibration import OrdinalMapping, RakingResult, calibrate_report, fit_mapping, rake_weights, target_marginals
from personae.survey.elicit import NONE_LABEL, Answer, Mode, elicit
from personae.survey.graph import answer_records, default_scenario, make_survey_node, survey_graph, survey_graph_config
from personae.survey.instrument import END, Instrument, Option, Question, SkipRule, check_instrument, load_instrument, next_question, option_order, pipe_text
from personae.survey.realism import RealismReport, realism_report
from personae.survey.refine import RefineConfig, RefineResult, RoundResult, refine_personas
from personae.survey.revise import LLMReviser, MixtureReviser, PersonaRevisions, TrainingView, training_view
from personae.survey.run import SurveyConfig, SurveyResult, run_survey, survey_paths
from personae.survey.split import QuestionSplit, split_questions, sub_instrument
from personae.survey.table import answer_table, read_table, write_table
from personae.survey.targets import HumanTargets, load_targets

__all__ = [
    "Answer",
    "LLMReviser",
    "MixtureReviser",
    "OrdinalMapping",
    "PersonaRevisions",
    "QuestionSplit",
    "RakingResult",
    "RefineConfig",
    "RefineResult",
    "RoundResult",
    "TrainingView",
    "calibrate_report",
    "fit_mapping",
    "rake_weights",
    "refine_personas",
    "split_questions",
    "sub_instrument",
    "target_marginals",
    "training_view",
    "HumanTargets",
    "RealismReport",
    "END",
    "Instrument",
    "Mode",
    "NONE_LABEL",
    "Option",
    "Question",
    "SkipRule",
    "SurveyConfig",
    "SurveyResult",
    "answer_records",
    "answer_table",
    "check_instrument",
    "default_scenario",
    "elicit",
    "load_instrument",
    "load_targets",
    "make_survey_node",
    "next_question",
    "option_order",
    "pipe_text",
    "read_table",
    "realism_report",
    "run_survey",
    "survey_graph",
    "survey_graph_config",
    "survey_paths",
    "write_table",
]
