"""Evaluation: judged (PersonaGym-style) and judge-free transcript metrics, comparisons, scorecards."""

from personae.evaluation.agreement import AgreementReport, judge_agreement, krippendorff_alpha_interval
from personae.evaluation.benchmark import QuestionBank, load_personas, load_questions
from personae.evaluation.calibration import CalibrationSet, load_calibration
from personae.evaluation.compare import ComparisonReport, MetricComparison, acompare_arms, compare_arms, compare_reports, compare_samples
from personae.evaluation.config import TASKS, EvaluationConfig, JudgedConfig, JudgeReliabilityConfig, ProbesConfig, ReliabilityThresholds
from personae.evaluation.environments import Environment, load_environments, select_environments
from personae.evaluation.judged import JudgedItem, JudgedReport, Judgement, evaluate_judged
from personae.evaluation.probes import Probe, ProbeAnswer, ProbeReport, evaluate_probes, extract_probes, generate_probes
from personae.evaluation.reference import ReferenceReport, human_likeness, load_reference
from personae.evaluation.judges import JudgeReliability, JudgeReliabilityReport, assess_judges
from personae.evaluation.rubrics import Rubric, RubricLevel, load_rubrics
from personae.evaluation.run import evaluate_run
from personae.evaluation.scorecard import Scorecard, population_metrics
from personae.evaluation.transcript import ConversationMetrics, TranscriptReport, evaluate_transcripts, transcript_metrics

__all__ = [
    "TASKS",
    "AgreementReport",
    "CalibrationSet",
    "ComparisonReport",
    "ConversationMetrics",
    "Environment",
    "EvaluationConfig",
    "JudgeReliability",
    "JudgeReliabilityConfig",
    "JudgeReliabilityReport",
    "JudgedConfig",
    "JudgedItem",
    "JudgedReport",
    "Judgement",
    "MetricComparison",
    "Probe",
    "ProbeAnswer",
    "ProbeReport",
    "ProbesConfig",
    "ReferenceReport",
    "QuestionBank",
    "ReliabilityThresholds",
    "Rubric",
    "RubricLevel",
    "Scorecard",
    "TranscriptReport",
    "acompare_arms",
    "assess_judges",
    "compare_arms",
    "compare_reports",
    "compare_samples",
    "evaluate_judged",
    "evaluate_probes",
    "evaluate_run",
    "evaluate_transcripts",
    "extract_probes",
    "generate_probes",
    "human_likeness",
    "judge_agreement",
    "krippendorff_alpha_interval",
    "load_calibration",
    "load_environments",
    "load_reference",
    "load_personas",
    "load_questions",
    "load_rubrics",
    "population_metrics",
    "select_environments",
    "transcript_metrics",
]
