"""The realism report: how far simulated answers are from human ones, and how they are answered.

Per question (and per demographic cell the targets give):

* **distance** to the human distribution, in [0, 1]: for ordinal scales (``likert``,
  ``ordinal``) the Wasserstein-1 distance between the answer distributions over scale
  positions 0..k-1, divided by k-1; for ``numeric`` the Wasserstein-1 distance over the
  values divided by the question's range (``max - min``); for nominal questions
  (``single``, a ranking's first choice, and ``multiple`` choice over its normalised
  selection shares) the Jensen–Shannon *distance* (√ of the divergence, base 2).
  Refusal options are left out of ordinal distances (they are not on the scale).
* **representativeness** = 1 − distance; the report's score is 1 − the mean distance
  over the questions that have a target (1: the same distributions as the humans).
* **variance ratio** = simulated variance / human variance of scale positions (or
  values); below 1 the personas agree with each other more than people do.
* **extreme-answer rate** (share at either end of a scale), **midpoint rate** (share at
  the middle of an odd scale), **acquiescence** (likert: share on the upper, agreeing,
  half; the scale is listed from disagree to agree), **refusal rate** (share of those
  asked whose answer was a refusal option, unclassified or failed) — each also for
  the humans where the target allows.
* **mode collapse**: a respondent's answer profile is their answers to every
  non-text question; the report counts distinct profiles and flags ``collapsed`` when
  more than one respondent answered and all gave the same profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from personae.survey.instrument import Instrument, Question
from personae.survey.targets import Distribution, HumanTargets

__all__ = [
    "QuestionRealism",
    "CellRealism",
    "ProfileStats",
    "RealismReport",
    "realism_report",
    "distance",
    "simulated_distribution",
    "answer_profiles",
    "scale_stats",
    "cell_rows",
]


class QuestionRealism(BaseModel):
    """One question's realism figures (``human_*``: the same figure for the target, if given)."""

    id: str
    type: str
    metric: str | None = Field(None, description="wasserstein, jensen_shannon, or None (text, no target)")
    options: list[str] = Field(default_factory=list, description="option codes in the instrument's order")
    n_asked: int = 0
    n_answered: int = 0
    distance: float | None = None
    representativeness: float | None = None
    variance_ratio: float | None = None
    variance: float | None = None
    human_variance: float | None = None
    extreme_rate: float | None = None
    human_extreme_rate: float | None = None
    midpoint_rate: float | None = None
    human_midpoint_rate: float | None = None
    acquiescence: float | None = None
    human_acquiescence: float | None = None
    refusal_rate: float | None = None
    human_refusal_rate: float | None = None
    modal_share: float | None = Field(None, description="share of answerers giving the most common answer")
    simulated: dict[str, float] = Field(default_factory=dict)
    human: dict[str, float] | None = None
    # calibration columns (personae.survey.calibration), beside the raw figures above, never instead
    reweighted: dict[str, float] | None = Field(None, description="answers with respondents raked to the target marginals")
    reweighted_distance: float | None = None
    mapped: dict[str, float] | None = Field(None, description="answers through the mapping learned on the train questions")
    mapped_distance: float | None = None


class CellRealism(BaseModel):
    """One question in one demographic cell."""

    question_id: str
    cell: str
    where: dict[str, str]
    n_simulated: int
    n_human: float | None = None
    distance: float | None = None
    representativeness: float | None = None
    skipped: str | None = None


class ProfileStats(BaseModel):
    """Mode collapse across personas: how many distinct answer profiles the population gives."""

    n_respondents: int
    n_distinct: int
    distinct_share: float | None
    largest_share: float | None = Field(None, description="share of respondents in the most common profile")
    collapsed: bool = Field(description="more than one respondent, all with the same profile")
    identical_questions: list[str] = Field(default_factory=list, description="questions every answerer answered the same way")


class RealismReport(BaseModel):
    """The realism report of a survey run."""

    instrument: str
    mode: str | None = None
    target: str | None = None
    target_source: str | None = None
    n_respondents: int = 0
    representativeness: float | None = None
    mean_distance: float | None = None
    acquiescence: float | None = None
    extreme_rate: float | None = None
    midpoint_rate: float | None = None
    refusal_rate: float | None = None
    questions: list[QuestionRealism] = Field(default_factory=list)
    cells: list[CellRealism] = Field(default_factory=list)
    profiles: ProfileStats
    warnings: list[str] = Field(default_factory=list)
    calibration: dict[str, Any] | None = Field(None, description="how the reweighted and mapped columns were made (see calibration.py)")

    def question(self, qid: str) -> QuestionRealism:
        return next(q for q in self.questions if q.id == qid)

    def distances(self) -> list[dict[str, Any]]:
        """Per question: the raw distance, and beside it the reweighted and mapped ones (``None`` where not made)."""
        return [{"question": q.id, "raw": q.distance, "reweighted": q.reweighted_distance, "mapped": q.mapped_distance} for q in self.questions]

    def metrics(self, prefix: str = "survey") -> dict[str, float]:
        """Every finite figure as a flat ``name → float`` (for MLflow and the scorecard)."""
        out: dict[str, Any] = {
            "representativeness": self.representativeness, "mean_distance": self.mean_distance,
            "acquiescence": self.acquiescence, "extreme_rate": self.extreme_rate, "midpoint_rate": self.midpoint_rate,
            "refusal_rate": self.refusal_rate, "respondents": self.n_respondents,
            "distinct_profiles": self.profiles.n_distinct, "distinct_profile_share": self.profiles.distinct_share,
            "mode_collapse": 1.0 if self.profiles.collapsed else 0.0,
        }
        for column in ("reweighted", "mapped"):
            out[f"mean_distance_{column}"] = _mean([getattr(q, f"{column}_distance") for q in self.questions])
        # the raw mean over the questions the mapping was shown on, to read beside mean_distance_mapped
        out["mean_distance_mapped_raw"] = _mean([q.distance for q in self.questions if q.mapped_distance is not None])
        for q in self.questions:
            for name in ("distance", "reweighted_distance", "mapped_distance", "variance_ratio", "extreme_rate", "midpoint_rate", "acquiescence", "refusal_rate", "modal_share"):
                out[f"q.{q.id}.{name}"] = getattr(q, name)
        return {f"{prefix}.{k}": float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


# ---- distributions ----------------------------------------------------------------
def _numeric_key(value: float) -> str:
    return f"{float(value):g}"


def simulated_distribution(rows: pd.DataFrame, question: Question) -> tuple[Distribution, int, int]:
    """The simulated answer distribution of one question's rows, with respondents asked and answered.

    Refused-by-option answers count as answers (their code is in the distribution);
    unclassified and failed ones do not.
    """
    asked = rows["respondent_id"].nunique()
    coded = rows[rows["status"].isin(["answered", "refused"])]
    answered = coded["respondent_id"].nunique()
    counts: dict[str, float] = {}
    if question.type == "numeric":
        for v in coded["value"].dropna():
            counts[_numeric_key(v)] = counts.get(_numeric_key(v), 0.0) + 1
    elif question.type == "ranking":
        for code in coded.loc[coded["rank"] == 1, "option"].dropna():
            counts[str(code)] = counts.get(str(code), 0.0) + 1
    elif question.type != "text":
        for code in coded["option"].dropna():
            counts[str(code)] = counts.get(str(code), 0.0) + 1
    if question.type == "multiple":
        shares = {k: v / answered for k, v in counts.items()} if answered else {}
    else:
        total = sum(counts.values())
        shares = {k: v / total for k, v in counts.items()} if total else {}
    return Distribution(shares=shares, n=answered), asked, answered


def _positions(question: Question, shares: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, weights) on the question's scale, refusals dropped and renormalised."""
    if question.type == "numeric":
        items = [(float(k), v) for k, v in shares.items()]
    else:
        items = [(float(question.position(k)), v) for k, v in shares.items() if question.position(k) is not None]
    total = sum(v for _, v in items)
    if not items or total <= 0:
        return None
    return np.array([p for p, _ in items]), np.array([v / total for _, v in items])


def _span(question: Question, *dists: Mapping[str, float]) -> float:
    if question.type != "numeric":
        return float(max(1, len(question.scale) - 1))
    if question.min is not None and question.max is not None:
        return float(question.max - question.min)
    values = [float(k) for d in dists for k in d]
    return float(max(values) - min(values)) or 1.0


def distance(question: Question, simulated: Mapping[str, float], human: Mapping[str, float]) -> tuple[float | None, str | None]:
    """The distance (in [0, 1]) between two answer distributions of ``question``, and its metric's name."""
    if question.type == "text":
        return None, None
    if question.ordinal or question.type == "numeric":
        a, b = _positions(question, simulated), _positions(question, human)
        if a is None or b is None:
            return None, "wasserstein"
        return float(wasserstein_distance(a[0], b[0], a[1], b[1]) / _span(question, simulated, human)), "wasserstein"
    codes = sorted(set(simulated) | set(human))
    p = np.array([simulated.get(c, 0.0) for c in codes], dtype=float)
    q = np.array([human.get(c, 0.0) for c in codes], dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        return None, "jensen_shannon"
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2)), "jensen_shannon"


def scale_stats(question: Question, shares: Mapping[str, float]) -> dict[str, float | None]:
    """Variance, extreme, midpoint and acquiescence rates of a distribution (ordinal/numeric; else ``None``s)."""
    out: dict[str, float | None] = {"variance": None, "extreme_rate": None, "midpoint_rate": None, "acquiescence": None}
    pos = _positions(question, shares) if (question.ordinal or question.type == "numeric") else None
    if pos is None:
        return out
    values, weights = pos
    mean = float(np.sum(values * weights))
    out["variance"] = float(np.sum(weights * (values - mean) ** 2))
    if question.ordinal:
        k = len(question.scale)
        out["extreme_rate"] = float(weights[(values == 0) | (values == k - 1)].sum())
        out["midpoint_rate"] = float(weights[values == (k - 1) / 2].sum()) if k % 2 == 1 else None
        if question.type == "likert":
            out["acquiescence"] = float(weights[values > (k - 1) / 2].sum())
    return out


def _refusal_rate(rows: pd.DataFrame) -> float | None:
    """Share of respondents asked whose answer was not substantive (refusal option, unclassified, failed)."""
    asked = rows["respondent_id"].nunique()
    if not asked:
        return None
    substantive = rows.loc[rows["status"] == "answered", "respondent_id"].nunique()
    return float(1 - substantive / asked)


def _refusal_share(question: Question, shares: Mapping[str, float]) -> float | None:
    refusals = {o.code for o in question.options if o.refusal}
    if not refusals or question.type == "multiple":
        return None
    return float(sum(v for k, v in shares.items() if k in refusals))


# ---- profiles ----------------------------------------------------------------------
def answer_profiles(frame: pd.DataFrame, instrument: Instrument) -> ProfileStats:
    """Distinct answer profiles (answers to every non-text question) across respondents."""
    types = {q.id: q.type for q in instrument.questions}
    rows = frame[frame["question_id"].map(lambda qid: types.get(qid) not in (None, "text"))]
    profiles: dict[str, list[str]] = {}
    for rid, group in rows.sort_values(["position", "rank"], na_position="first").groupby("respondent_id", sort=True):
        parts = []
        for qid, answers in group.groupby("question_id", sort=True):
            values = [str(v) if pd.notna(v) else _numeric_key(n) if pd.notna(n) else f"<{s}>" for v, n, s in zip(answers["option"], answers["value"], answers["status"], strict=True)]
            parts.append(f"{qid}={'|'.join(values)}")
        profiles[str(rid)] = parts
    n = len(profiles)
    keys = [";".join(p) for p in profiles.values()]
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    identical = []
    # only coded answers: respondents all left unclassified (or failed) did not give "the same answer"
    for qid, group in rows[rows["status"].isin(["answered", "refused"])].groupby("question_id", sort=True):
        answers = group.groupby("respondent_id")["option"].apply(lambda s: "|".join(map(str, s))).tolist()
        numeric = group.groupby("respondent_id")["value"].first().tolist()
        distinct = {a for a in answers} if types[qid] != "numeric" else {str(v) for v in numeric}
        if len(answers) > 1 and len(distinct) == 1:
            identical.append(str(qid))
    return ProfileStats(
        n_respondents=n, n_distinct=len(counts), distinct_share=len(counts) / n if n else None,
        largest_share=max(counts.values()) / n if n else None, collapsed=n > 1 and len(counts) == 1, identical_questions=identical,
    )


# ---- the report ----------------------------------------------------------------------
def _cell_rows(frame: pd.DataFrame, where: Mapping[str, str]) -> pd.DataFrame | None:
    mask = pd.Series(True, index=frame.index)
    for path, value in where.items():
        column = f"attr.{path}"
        if column not in frame.columns:
            return None
        mask &= frame[column].astype("string") == str(value)
    return frame[mask]


cell_rows = _cell_rows  # public: the rows of one demographic cell (None when the personas lack an attribute)


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else None


def realism_report(
    frame: pd.DataFrame, instrument: Instrument, targets: HumanTargets | None = None, *, min_cell: int = 5, mode: str | None = None,
) -> RealismReport:
    """The realism report of a tidy answer table (see the module doc for every figure)."""
    questions: list[QuestionRealism] = []
    cells: list[CellRealism] = []
    warnings: list[str] = []
    for question in instrument.questions:
        rows = frame[frame["question_id"] == question.id]
        sim, asked, answered = simulated_distribution(rows, question)
        stats = scale_stats(question, sim.shares)
        modal = max(sim.shares.values()) if sim.shares and question.type not in ("multiple", "text") else None
        item = QuestionRealism(
            id=question.id, type=question.type, options=[o.code for o in question.options], n_asked=asked, n_answered=answered, simulated=sim.shares,
            variance=stats["variance"], extreme_rate=stats["extreme_rate"], midpoint_rate=stats["midpoint_rate"],
            acquiescence=stats["acquiescence"], refusal_rate=_refusal_rate(rows),
            modal_share=modal,
        )
        human = targets.overall(question.id) if targets is not None else None
        if human is not None:
            hstats = scale_stats(question, human.shares)
            item.human = human.shares
            item.distance, item.metric = distance(question, sim.shares, human.shares)
            item.representativeness = None if item.distance is None else 1.0 - item.distance
            item.human_variance = hstats["variance"]
            item.variance_ratio = stats["variance"] / hstats["variance"] if stats["variance"] is not None and hstats["variance"] else None
            item.human_extreme_rate, item.human_midpoint_rate, item.human_acquiescence = hstats["extreme_rate"], hstats["midpoint_rate"], hstats["acquiescence"]
            item.human_refusal_rate = _refusal_share(question, human.shares)
        elif question.type != "text":
            item.metric = "wasserstein" if (question.ordinal or question.type == "numeric") else "jensen_shannon"
        questions.append(item)
        if targets is None:
            continue
        for label, dist in targets.cells.get(question.id, {}).items():
            if label == "overall":
                continue
            where = targets.cell_attributes[question.id][label]
            subset = _cell_rows(rows, where)
            if subset is None:
                cells.append(CellRealism(question_id=question.id, cell=label, where=where, n_simulated=0, n_human=dist.n, skipped="the personas have no such attribute"))
                continue
            cell_sim, _, n_sim = simulated_distribution(subset, question)
            entry = CellRealism(question_id=question.id, cell=label, where=where, n_simulated=n_sim, n_human=dist.n)
            if n_sim < min_cell or (dist.n is not None and dist.n < min_cell):
                entry.skipped = f"fewer than {min_cell} respondents"
            else:
                entry.distance, _ = distance(question, cell_sim.shares, dist.shares)
                entry.representativeness = None if entry.distance is None else 1.0 - entry.distance
            cells.append(entry)
    profiles = answer_profiles(frame, instrument) if not frame.empty else ProfileStats(n_respondents=0, n_distinct=0, distinct_share=None, collapsed=False)
    if profiles.collapsed:
        warnings.append(f"mode collapse: all {profiles.n_respondents} respondents gave the same answers to every question")
    elif profiles.identical_questions:
        warnings.append(f"every respondent gave the same answer to: {', '.join(profiles.identical_questions)}")
    mean_distance = _mean([q.distance for q in questions])
    return RealismReport(
        instrument=instrument.name, mode=mode, target=None if targets is None else targets.file,
        target_source=None if targets is None else targets.source, n_respondents=int(frame["respondent_id"].nunique()) if not frame.empty else 0,
        representativeness=None if mean_distance is None else 1.0 - mean_distance, mean_distance=mean_distance,
        acquiescence=_mean([q.acquiescence for q in questions]), extreme_rate=_mean([q.extreme_rate for q in questions]),
        midpoint_rate=_mean([q.midpoint_rate for q in questions]), refusal_rate=_mean([q.refusal_rate for q in questions]),
        questions=questions, cells=cells, profiles=profiles, warnings=warnings,
    )


def target_cells(targets: HumanTargets) -> list[str]:
    """Every cell label in ``targets`` (for listings)."""
    return sorted({label for per_q in targets.cells.values() for label in per_q})

