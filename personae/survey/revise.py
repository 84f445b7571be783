"""Revising personas toward human answers: what a reviser may see, and two revisers.

**What a reviser sees** is a :class:`TrainingView`, built by :func:`training_view` from the
*train* questions only: each train question's text, options, distance and simulated vs
human distributions; per demographic cell of the targets, the cell's train divergences
(worst cell first); and, per revisable attribute value, the simulated answers of the
personas holding it (the evidence of how the attribute drives answers). Validation and
test questions never enter the view, so they cannot reach a revision prompt: a reviser
has no other input than the view and the personas.

**Revisers** (``await reviser.revise(personas, view, seed=...)`` → :class:`PersonaRevisions`):

* :class:`LLMReviser` — one structured call per worst cell through the gateway, prompt
  ``survey_refine.j2``: it proposes new values of the revisable attributes (only values
  the taxonomy allows) and a revised description for personas of that cell.
* :class:`MixtureReviser` — deterministic, no model: for each worst cell it picks the mix
  of one revisable attribute's values whose answers (the view's per-value evidence)
  come closest, in total variation over the train questions, to the cell's human
  answers, and moves the fewest personas to reach that mix; a description mentioning the
  old value gets the new one in its place. A baseline and a fallback, not a model of why
  people answer as they do.

:func:`apply_revisions` applies proposals, keeping only allowed attribute values.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ModelOutputError
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.prompts import PromptSet, render_with
from personae.survey.instrument import Instrument
from personae.survey.realism import cell_rows, distance, simulated_distribution
from personae.survey.split import QuestionSplit
from personae.survey.targets import HumanTargets

__all__ = [
    "AttributeChange", "PersonaRevision", "PersonaRevisions", "TrainQuestion", "CellDivergence", "TrainingView",
    "training_view", "Reviser", "LLMReviser", "MixtureReviser", "apply_revisions", "cell_personas",
]

log = logging.getLogger(__name__)


# ---- what a reviser sees ------------------------------------------------------------
class TrainQuestion(BaseModel):
    id: str
    type: str
    text: str
    options: list[str] = Field(default_factory=list)
    distance: float | None = None
    simulated: dict[str, float] = Field(default_factory=dict)
    human: dict[str, float] = Field(default_factory=dict)


class CellDivergence(BaseModel):
    """One demographic cell on the train questions: mean distance and per-question distributions."""

    cell: str
    where: dict[str, str]
    n_simulated: int
    mean_distance: float
    distances: dict[str, float] = Field(default_factory=dict)
    simulated: dict[str, dict[str, float]] = Field(default_factory=dict)
    human: dict[str, dict[str, float]] = Field(default_factory=dict)


class TrainingView(BaseModel):
    """Everything a reviser may see: train questions only (see the module doc)."""

    model_config = ConfigDict(frozen=True)

    questions: list[TrainQuestion]
    cells: list[CellDivergence] = Field(default_factory=list, description="worst first")
    by_value: dict[str, dict[str, dict[str, dict[str, float]]]] = Field(
        default_factory=dict, description="attribute → value → train question → simulated shares of the personas with that value")
    revisable: dict[str, list[str]] = Field(default_factory=dict, description="attribute → allowed values")
    mean_distance: float | None = None


def _train_only(frame: pd.DataFrame, train: set[str]) -> pd.DataFrame:
    return frame[frame["question_id"].isin(train)]


def training_view(
    frame: pd.DataFrame, instrument: Instrument, targets: HumanTargets, split: QuestionSplit, revisable: Mapping[str, Sequence[str]], *, min_cell: int = 1,
) -> TrainingView:
    """The view of ``frame`` (a survey's tidy table) a reviser may see: the train questions of ``split`` only."""
    train = set(split.train)
    rows = _train_only(frame, train)
    questions: list[TrainQuestion] = []
    cells: dict[str, CellDivergence] = {}
    for qid in split.train:
        question = instrument.question(qid)
        qrows = rows[rows["question_id"] == qid]
        sim = simulated_distribution(qrows, question)[0].shares
        human = targets.overall(qid)
        d = distance(question, sim, human.shares)[0] if human is not None else None
        questions.append(TrainQuestion(id=qid, type=question.type, text=question.text, options=[o.code for o in question.options],
                                       distance=d, simulated=sim, human={} if human is None else human.shares))
        for label, dist in targets.cells.get(qid, {}).items():
            if label == "overall":
                continue
            where = targets.cell_attributes[qid][label]
            subset = cell_rows(qrows, where)
            if subset is None:
                continue
            cell_sim, _, n = simulated_distribution(subset, question)
            if n < min_cell:
                continue
            cd, _ = distance(question, cell_sim.shares, dist.shares)
            entry = cells.setdefault(label, CellDivergence(cell=label, where=where, n_simulated=n, mean_distance=0.0))
            entry.n_simulated = max(entry.n_simulated, n)
            if cd is not None:
                entry.distances[qid] = cd
            entry.simulated[qid], entry.human[qid] = cell_sim.shares, dist.shares
    for entry in cells.values():
        entry.mean_distance = sum(entry.distances.values()) / len(entry.distances) if entry.distances else 0.0
    by_value: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for attribute, values in revisable.items():
        column = f"attr.{attribute}"
        if column not in rows.columns:
            continue
        for value in values:
            subset = rows[rows[column].astype("string") == str(value)]
            if subset.empty:
                continue
            by_value.setdefault(attribute, {})[str(value)] = {
                qid: simulated_distribution(subset[subset["question_id"] == qid], instrument.question(qid))[0].shares for qid in split.train
            }
    finite = [q.distance for q in questions if q.distance is not None]
    return TrainingView(
        questions=questions, cells=sorted(cells.values(), key=lambda c: (-c.mean_distance, c.cell)), by_value=by_value,
        revisable={k: [str(v) for v in vs] for k, vs in revisable.items()}, mean_distance=sum(finite) / len(finite) if finite else None,
    )


# ---- proposals ----------------------------------------------------------------------
class AttributeChange(BaseModel):
    attribute: str = Field(description="a revisable attribute path")
    value: str = Field(description="one of its allowed values")


class PersonaRevision(BaseModel):
    persona_id: str
    attributes: list[AttributeChange] = Field(default_factory=list)
    description: str | None = Field(None, description="the revised description (omit to keep it)")
    reason: str = ""


class PersonaRevisions(BaseModel):
    """A reviser's proposals (the structured output of ``survey_refine.j2``)."""

    revisions: list[PersonaRevision] = Field(default_factory=list)


class Reviser(Protocol):
    calls: int

    async def revise(self, personas: Sequence[Persona], view: TrainingView, *, seed: int) -> PersonaRevisions: ...


def cell_personas(personas: Sequence[Persona], where: Mapping[str, str]) -> list[Persona]:
    """The personas whose attributes match every (attribute, value) of ``where``."""
    return [p for p in personas if all(str(p.attributes.get(k)) == str(v) for k, v in where.items())]


def _replace_value(description: str, old: str, new: str) -> str:
    if not description or not old:
        return description
    return re.sub(rf"\b{re.escape(old)}\b", new, description)


def apply_revisions(personas: Sequence[Persona], revisions: PersonaRevisions, revisable: Mapping[str, Sequence[str]]) -> tuple[list[Persona], list[dict[str, Any]]]:
    """Apply proposals; unknown personas, non-revisable attributes and disallowed values are ignored (logged).

    Returns the new personas (same ids and order) and one change record per persona changed.
    """
    allowed = {k: {str(v) for v in vs} for k, vs in revisable.items()}
    by_id = {p.id: p for p in personas}
    updated: dict[str, Persona] = {}
    changes: list[dict[str, Any]] = []
    for revision in revisions.revisions:
        persona = updated.get(revision.persona_id) or by_id.get(revision.persona_id)
        if persona is None:
            log.warning("a revision names an unknown persona %r; ignored", revision.persona_id)
            continue
        attributes = dict(persona.attributes)
        changed: dict[str, tuple[Any, str]] = {}
        for change in revision.attributes:
            if change.attribute not in allowed or change.value not in allowed[change.attribute]:
                log.warning("a revision proposes %s=%r, which is not an allowed value; ignored", change.attribute, change.value)
                continue
            if str(attributes.get(change.attribute)) != change.value:
                changed[change.attribute] = (attributes.get(change.attribute), change.value)
                attributes[change.attribute] = change.value
        description = persona.description
        if revision.description is not None and revision.description.strip():
            description = revision.description.strip()
        if not changed and description == persona.description:
            continue
        updated[persona.id] = persona.model_copy(update={"attributes": attributes, "description": description})
        changes.append({"persona_id": persona.id, "attributes": {k: [None if o is None else str(o), n] for k, (o, n) in changed.items()},
                        "description_changed": description != persona.description, "reason": revision.reason})
    return [updated.get(p.id, p) for p in personas], changes


# ---- the deterministic reviser --------------------------------------------------------
def _tv(p: Mapping[str, float], q: Mapping[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def fit_mix(n: int, evidence: Mapping[str, Mapping[str, Mapping[str, float]]], human: Mapping[str, Mapping[str, float]], *, max_mixes: int = 20_000) -> tuple[dict[str, int], float] | None:
    """The counts per value (summing to ``n``) whose mixed answers are closest to ``human`` (mean TV over questions).

    ``evidence``: value → question → shares. ``None`` when there is nothing to fit.
    """
    values = sorted(evidence)
    qids = sorted(q for q in human if all(q in evidence[v] and evidence[v][q] for v in values))
    if not values or not qids or n < 1:
        return None
    best: tuple[dict[str, int], float] | None = None
    for k, counts in enumerate(c for c in itertools.product(range(n + 1), repeat=len(values)) if sum(c) == n):
        if k >= max_mixes:
            break
        loss = 0.0
        for qid in qids:
            mixed: dict[str, float] = {}
            for value, c in zip(values, counts, strict=True):
                for code, share in evidence[value][qid].items():
                    mixed[code] = mixed.get(code, 0.0) + share * c / n
            loss += _tv(mixed, human[qid])
        loss /= len(qids)
        if best is None or loss < best[1] - 1e-12:
            best = (dict(zip(values, counts, strict=True)), loss)
    return best


def mix_revisions(personas: Sequence[Persona], view: TrainingView, cell: CellDivergence) -> list[PersonaRevision]:
    """Move the fewest personas of ``cell`` to the best-fitting mix of one revisable attribute (see :func:`fit_mix`)."""
    members = sorted(cell_personas(personas, cell.where), key=lambda p: p.id)
    best: tuple[str, dict[str, int], float] | None = None
    for attribute, evidence in sorted(view.by_value.items()):
        if attribute in cell.where or any(str(p.attributes.get(attribute)) not in evidence for p in members):
            continue
        current = {v: sum(str(p.attributes.get(attribute)) == v for p in members) for v in evidence}
        fit = fit_mix(len(members), evidence, cell.human)
        if fit is None or fit[0] == current:
            continue
        if best is None or fit[1] < best[2]:
            best = (attribute, fit[0], fit[1])
    if best is None:
        return []
    attribute, wanted, _ = best
    left = dict(wanted)
    movers: list[Persona] = []
    for persona in members:
        value = str(persona.attributes.get(attribute))
        if left.get(value, 0) > 0:
            left[value] -= 1
        else:
            movers.append(persona)
    out = []
    for persona in movers:
        value = next(v for v, c in sorted(left.items()) if c > 0)
        left[value] -= 1
        old = str(persona.attributes.get(attribute))
        out.append(PersonaRevision(
            persona_id=persona.id, attributes=[AttributeChange(attribute=attribute, value=value)],
            description=_replace_value(persona.description, old, value),
            reason=f"{cell.cell}: the mix of {attribute} that best matches the human answers on the train questions",
        ))
    return out


class MixtureReviser:
    """The deterministic reviser (no model calls; see the module doc)."""

    def __init__(self, *, max_cells: int = 3) -> None:
        self.max_cells = max_cells
        self.calls = 0

    async def revise(self, personas: Sequence[Persona], view: TrainingView, *, seed: int = 0) -> PersonaRevisions:
        revisions: list[PersonaRevision] = []
        for cell in view.cells[: self.max_cells]:
            revisions += mix_revisions(personas, view, cell)
        return PersonaRevisions(revisions=revisions)


# ---- the model reviser ------------------------------------------------------------------
class LLMReviser:
    """Revisions proposed by a model, one structured call per worst cell (prompt ``survey_refine.j2``)."""

    def __init__(self, gateway: Gateway, *, prompts: PromptSet | None = None, max_cells: int = 3, max_personas: int = 30, role: str = "reviser",
                 temperature: float = 0.0) -> None:
        self.gateway, self.prompts, self.role = gateway, prompts, role
        self.max_cells, self.max_personas, self.temperature = max_cells, max_personas, temperature
        self.calls = 0
        self.failures = 0

    def prompt(self, personas: Sequence[Persona], view: TrainingView, cell: CellDivergence) -> str:
        """The revision prompt for one cell (only the view's train questions and these personas)."""
        members = sorted(cell_personas(personas, cell.where), key=lambda p: p.id)[: self.max_personas]
        evidence = {
            "cell": cell.cell, "where": cell.where, "cell_mean_distance": round(cell.mean_distance, 4),
            "questions": [{"id": q.id, "text": q.text, "options": q.options, "cell_distance": cell.distances.get(q.id),
                           "simulated": cell.simulated.get(q.id, {}), "human": cell.human.get(q.id, {})} for q in view.questions if q.id in cell.human],
            "answers_by_attribute_value": view.by_value,
            "revisable": view.revisable,
            "personas": [{"id": p.id, "attributes": {k: p.attributes.get(k) for k in view.revisable}, "description": p.description} for p in members],
        }
        return render_with(self.prompts, "survey_refine", {"cell": cell.cell, "evidence": json.dumps(evidence, ensure_ascii=False, sort_keys=True)})

    async def revise(self, personas: Sequence[Persona], view: TrainingView, *, seed: int = 0) -> PersonaRevisions:
        revisions: list[PersonaRevision] = []
        for k, cell in enumerate(view.cells[: self.max_cells]):
            if not cell_personas(personas, cell.where):
                continue
            prompt = self.prompt(personas, view, cell)
            self.calls += 1
            try:
                reply = await self.gateway.structured([{"role": "user", "content": prompt}], PersonaRevisions, role=self.role,
                                                      temperature=self.temperature, max_tokens=4000, seed=seed * 1000 + k)
            except ModelOutputError as exc:  # one cell's unusable reply costs that cell's revisions, not the refinement
                self.failures += 1
                log.warning("the reviser's reply for cell %s did not validate (%s); no revisions for it this round", cell.cell, exc.message)
                continue
            ids = {p.id for p in cell_personas(personas, cell.where)}
            revisions += [r for r in reply.revisions if r.persona_id in ids]  # only this cell's personas
        return PersonaRevisions(revisions=revisions)
