"""Calibration: post-hoc adjustments of simulated answers, reported beside the raw figures, never instead.

Two adjustments, each a column of the realism report next to ``raw``
(:func:`calibrate_report` fills ``reweighted`` and ``mapped`` per question):

**Reweighted** (:func:`rake_weights`): every simulated respondent gets a weight so that the
weighted population matches the target marginals of the cell attributes (e.g. region,
age band), by raking — iterative proportional fitting, the same :func:`~personae.population.quotas.ipf`
the population quotas use — over the joint table of those attributes; a respondent's
weight is its raked cell total over its cell count (mean weight 1). The answer
distributions are then recomputed with the weights. :func:`target_marginals` reads the
marginals off the targets' per-cell sample sizes. It corrects *who* answered, not *how*:
when the answers within a cell are wrong, reweighting cannot fix them; a target value no
simulated respondent holds, or a combination the marginals force (e.g. every union member embraces
change but the targets need more resisting than non-members can give), cannot be reached:
``max_error`` says by how much, with a warning.

**Mapped** (:func:`fit_mapping`, :func:`apply_mapping`): one ordinal shift-and-stretch learned
on the *train* questions and applied to the other questions. On each train question with
an ordinal scale, positions are normalised to [0, 1]; the shift is the mean over train
questions of (human mean − simulated mean), the stretch the mean of (human SD / simulated
SD), clipped to [0.25, 4]. On a question it is applied to, each option's simulated mass
at position x moves to ``m + stretch·(x − m) + shift`` (m: that question's simulated mean),
clipped to the scale and split between the two neighbouring options so the mean is
kept exactly. Refusal options keep their mass. It corrects a response style shared
across questions (acquiescence: a shift; central tendency: a stretch); it cannot
correct a bias that differs between questions, and it leaves nominal and numeric
questions alone (``mapped`` is then empty). It is never applied to the questions it was
fitted on.

**In a survey run** (:func:`calibrate_survey`, what ``personae survey`` does when targets
are given): raking to the marginals the targets' per-cell ``n`` imply, and the mapping fitted
on the *train* questions of a seeded :func:`~personae.survey.split.split_questions` and
reported only on the others (validation and test); the split is recorded in the report's
``calibration``. A step that cannot be made (no per-cell ``n``, fewer than three targeted
questions, no ordinal train question) is skipped with a note; the raw figures never change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from personae.errors import ConfigError
from personae.population.quotas import ipf
from personae.survey.instrument import Instrument, Question
from personae.survey.realism import RealismReport, distance
from personae.survey.split import split_questions
from personae.survey.targets import Distribution, HumanTargets

__all__ = [
    "RakingResult", "OrdinalMapping", "target_marginals", "rake_weights", "weighted_distribution", "fit_mapping", "apply_mapping",
    "calibrate_report", "calibrate_survey",
]

log = logging.getLogger(__name__)


# ---- reweighting ------------------------------------------------------------------------
class RakingResult(BaseModel):
    """Raking weights of the simulated respondents and how well they meet the target marginals."""

    weights: dict[str, float] = Field(description="respondent id → weight (mean 1 over those weighted)")
    targets: dict[str, dict[str, float]]
    achieved: dict[str, dict[str, float]] = Field(description="weighted shares per attribute value")
    unweighted: dict[str, dict[str, float]] = Field(description="the simulated shares before raking")
    max_error: float = Field(description="largest absolute gap between achieved and target shares")
    iterations: int
    warnings: list[str] = Field(default_factory=list)


def target_marginals(targets: HumanTargets, attributes: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Per single-attribute cell, its share of the humans (from the cells' ``n``, pooled over questions)."""
    wanted = None if attributes is None else set(attributes)
    counts: dict[str, dict[str, float]] = {}
    for qid, cells in targets.cells.items():
        for label, dist in cells.items():
            where = targets.cell_attributes.get(qid, {}).get(label, {})
            if len(where) != 1 or dist.n is None:
                continue
            (attribute, value), = where.items()
            if wanted is None or attribute in wanted:
                counts.setdefault(attribute, {})[value] = counts.get(attribute, {}).get(value, 0.0) + dist.n
    out = {}
    for attribute, per_value in counts.items():
        total = sum(per_value.values())
        out[attribute] = {v: n / total for v, n in sorted(per_value.items())}
    return out


def _respondents(frame: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame:
    columns = [f"attr.{a}" for a in attributes]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError("the answer table has no column for a raking attribute", field=missing[0], expected="an attribute every persona holds")
    return frame.drop_duplicates("respondent_id")[["respondent_id", *columns]].astype({c: "string" for c in columns})


def rake_weights(frame: pd.DataFrame, marginals: Mapping[str, Mapping[str, float]], *, tol: float = 1e-9, max_iter: int = 2000) -> RakingResult:
    """Weights of the respondents of ``frame`` raked to ``marginals`` (attribute → value → share)."""
    attributes = sorted(marginals)
    if not attributes:
        raise ConfigError("no target marginals to rake to", field="marginals", expected="attribute → value → share (targets with per-cell n)")
    people = _respondents(frame, attributes)
    values = {a: sorted(marginals[a]) for a in attributes}
    warnings: list[str] = []
    index = {a: {v: i for i, v in enumerate(values[a])} for a in attributes}
    inside = people[[all(str(r[f"attr.{a}"]) in index[a] for a in attributes) for _, r in people.iterrows()]]
    if len(inside) < len(people):
        warnings.append(f"{len(people) - len(inside)} respondent(s) hold a value outside the target marginals: weight 0")
    if inside.empty:
        raise ConfigError("no respondent holds a value of the target marginals", field="marginals", expected=f"values among {values}")
    shape = tuple(len(values[a]) for a in attributes)
    seed = np.zeros(shape)
    cells = []
    for _, row in inside.iterrows():
        cell = tuple(index[a][str(row[f"attr.{a}"])] for a in attributes)
        seed[cell] += 1
        cells.append(cell)
    n = float(len(inside))
    margins = []
    for a in attributes:
        shares = np.array([float(marginals[a][v]) for v in values[a]])
        margins.append(shares / shares.sum() * n)
    table, iterations, _ = ipf(seed, margins, tol=tol * n, max_iter=max_iter)
    weights = {str(rid): float(table[c] / seed[c]) for rid, c in zip(inside["respondent_id"], cells, strict=True)}
    weights.update({str(rid): 0.0 for rid in people["respondent_id"] if str(rid) not in weights})
    achieved: dict[str, dict[str, float]] = {}
    unweighted: dict[str, dict[str, float]] = {}
    for a in attributes:
        column = people[f"attr.{a}"].astype(str).tolist()
        w = [weights[str(r)] for r in people["respondent_id"]]
        total = sum(w)
        achieved[a] = {v: sum(wi for wi, c in zip(w, column, strict=True) if c == v) / total for v in values[a]}
        unweighted[a] = {v: column.count(v) / len(column) for v in values[a]}
    error = max(abs(achieved[a][v] - marginals[a][v] / sum(marginals[a].values())) for a in attributes for v in values[a])
    for a in attributes:
        for v in values[a]:
            if marginals[a][v] > 0 and unweighted[a][v] == 0:
                warnings.append(f"no simulated respondent has {a}={v}: its target share cannot be met")
    if error > 1e-6 and not any("cannot be met" in w for w in warnings):
        warnings.append(f"the target marginals cannot be met jointly by these respondents (max error {error:.3f}): "
                        "a combination the targets need has no simulated respondent")
    for warning in warnings:
        log.warning("raking: %s", warning)
    return RakingResult(weights=weights, targets={a: dict(marginals[a]) for a in attributes}, achieved=achieved, unweighted=unweighted,
                        max_error=float(error), iterations=iterations, warnings=warnings)


def weighted_distribution(rows: pd.DataFrame, question: Question, weights: Mapping[str, float]) -> Distribution:
    """The answer distribution of one question's rows with respondent weights (as :func:`~personae.survey.realism.simulated_distribution`)."""
    coded = rows[rows["status"].isin(["answered", "refused"])]
    counts: dict[str, float] = {}
    if question.type == "numeric":
        pairs = [(f"{float(v):g}", r) for v, r in zip(coded["value"], coded["respondent_id"], strict=True) if pd.notna(v)]
    elif question.type == "ranking":
        first = coded[coded["rank"] == 1]
        pairs = [(str(c), r) for c, r in zip(first["option"], first["respondent_id"], strict=True) if pd.notna(c)]
    elif question.type == "text":
        pairs = []
    else:
        pairs = [(str(c), r) for c, r in zip(coded["option"], coded["respondent_id"], strict=True) if pd.notna(c)]
    for code, rid in pairs:
        counts[code] = counts.get(code, 0.0) + float(weights.get(str(rid), 0.0))
    answered = sum(float(weights.get(str(r), 0.0)) for r in coded["respondent_id"].unique())
    base = answered if question.type == "multiple" else sum(counts.values())
    return Distribution(shares={k: v / base for k, v in counts.items()} if base else {}, n=answered)


# ---- the per-question mapping --------------------------------------------------------------
class OrdinalMapping(BaseModel):
    """A shift and stretch on normalised scale positions, learned on train questions (see the module doc)."""

    shift: float = 0.0
    stretch: float = 1.0
    fitted_on: list[str] = Field(default_factory=list)


def _moments(question: Question, shares: Mapping[str, float]) -> tuple[float, float] | None:
    k = len(question.scale)
    items = [(question.position(c) / (k - 1), s) for c, s in shares.items() if question.position(c) is not None]
    total = sum(s for _, s in items)
    if k < 2 or total <= 0:
        return None
    mean = sum(x * s for x, s in items) / total
    return mean, (sum(s * (x - mean) ** 2 for x, s in items) / total) ** 0.5


def fit_mapping(report: RealismReport, instrument: Instrument, train: Iterable[str]) -> OrdinalMapping:
    """Fit the shift and stretch on the ordinal ``train`` questions of ``report`` that have a human target."""
    shifts, stretches, used = [], [], []
    for qid in train:
        question = instrument.question(qid)
        item = report.question(qid)
        if not question.ordinal or not item.human or not item.simulated:
            continue
        sim, human = _moments(question, item.simulated), _moments(question, item.human)
        if sim is None or human is None:
            continue
        shifts.append(human[0] - sim[0])
        if sim[1] > 1e-9:
            stretches.append(human[1] / sim[1])
        used.append(qid)
    if not used:
        return OrdinalMapping()
    stretch = float(np.clip(np.mean(stretches), 0.25, 4.0)) if stretches else 1.0
    return OrdinalMapping(shift=float(np.mean(shifts)), stretch=stretch, fitted_on=used)


def apply_mapping(mapping: OrdinalMapping, question: Question, shares: Mapping[str, float]) -> dict[str, float]:
    """The mapped distribution of one ordinal question (``{}`` for other questions)."""
    moments = _moments(question, shares) if question.ordinal else None
    if moments is None:
        return {}
    k = len(question.scale)
    mean = moments[0]
    out: dict[str, float] = {c: s for c, s in shares.items() if question.position(c) is None}  # refusals keep their mass
    codes = [o.code for o in question.scale]
    for code, share in shares.items():
        position = question.position(code)
        if position is None:
            continue
        x = position / (k - 1)
        y = float(np.clip(mean + mapping.stretch * (x - mean) + mapping.shift, 0.0, 1.0)) * (k - 1)
        low = int(np.floor(y))
        high = min(low + 1, k - 1)
        frac = y - low
        out[codes[low]] = out.get(codes[low], 0.0) + share * (1 - frac)
        if frac > 0:
            out[codes[high]] = out.get(codes[high], 0.0) + share * frac
    return {c: s for c, s in out.items() if s > 1e-15}


# ---- in the report ------------------------------------------------------------------------
def calibrate_report(
    report: RealismReport, frame: pd.DataFrame, instrument: Instrument, targets: HumanTargets | None, *,
    raking: RakingResult | None = None, mapping: OrdinalMapping | None = None, apply_to: Iterable[str] | None = None,
) -> RealismReport:
    """A copy of ``report`` with the ``reweighted`` and ``mapped`` columns beside the raw ones (raw untouched).

    ``apply_to`` limits the mapping to those questions (default: every question it was not fitted on).
    """
    out = report.model_copy(deep=True)
    mapped_ids = None if apply_to is None else set(apply_to)
    for item in out.questions:
        question = instrument.question(item.id)
        human = targets.overall(item.id) if targets is not None else None
        if raking is not None and question.type != "text":
            item.reweighted = weighted_distribution(frame[frame["question_id"] == item.id], question, raking.weights).shares
            if human is not None:
                item.reweighted_distance = distance(question, item.reweighted, human.shares)[0]
        if (mapping is not None and mapping.fitted_on and item.id not in mapping.fitted_on and question.ordinal
                and (mapped_ids is None or item.id in mapped_ids)):
            item.mapped = apply_mapping(mapping, question, item.simulated)
            if human is not None and item.mapped:
                item.mapped_distance = distance(question, item.mapped, human.shares)[0]
    out.calibration = {
        "reweighted": None if raking is None else {"targets": raking.targets, "achieved": raking.achieved, "max_error": raking.max_error, "warnings": raking.warnings},
        "mapped": None if mapping is None else mapping.model_dump(),
    }
    return out


def calibrate_survey(report: RealismReport, frame: pd.DataFrame, instrument: Instrument, targets: HumanTargets, *, seed: int = 0) -> RealismReport:
    """A survey's report with the reweighted and mapped columns (see the module doc); raw untouched.

    ``seed`` deals the question split; the mapping is fitted on its train questions and shown
    only on the validation and test ones. ``calibration`` records the split and a note for
    each step that could not be made.
    """
    notes: list[str] = []
    raking = None
    marginals = target_marginals(targets)
    if not marginals:
        notes.append("not reweighted: the targets give no single-attribute cell with a sample size n")
    else:
        try:
            raking = rake_weights(frame, marginals)
        except ConfigError as exc:
            notes.append(f"not reweighted: {exc.message}")
    split, mapping, held_out = None, None, []
    try:
        split = split_questions(instrument, targets, seed=seed)
    except ConfigError as exc:
        notes.append(f"not mapped: {exc.message}")
    if split is not None:
        held_out = [*split.validation, *split.test]
        mapping = fit_mapping(report, instrument, split.train)
        if not mapping.fitted_on:
            notes.append("not mapped: no ordinal train question has both simulated answers and a target")
            mapping = None
    out = calibrate_report(report, frame, instrument, targets, raking=raking, mapping=mapping, apply_to=held_out)
    raw_held_out = [out.question(q).distance for q in held_out if out.question(q).mapped_distance is not None]
    out.calibration = {
        **(out.calibration or {}),
        "split": None if split is None else {**split.model_dump(), "mapped_on": held_out},
        "held_out_raw_mean_distance": float(np.mean(raw_held_out)) if raw_held_out else None,
        "notes": notes,
    }
    for note in notes:
        log.info("calibration: %s", note)
    return out
