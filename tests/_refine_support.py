"""A synthetic target with a known answer model, for refinement and calibration tests.

The scripted respondents answer every statement by one taxonomy attribute,
``values_beliefs.attitude_to_change`` (those who embrace change lean to agree, those who
resist it to disagree; ``salt`` and ``taxes`` are reverse-keyed). The humans: half union
members (``work.union_member``), half not; 80 % of members and 50 % of non-members resist
change. The simulated population is wrong twice: two thirds are members, and every
member embraces change. Targets are the exact expected distributions of the
humans under the known model, overall and per region (with the cell sizes).
"""

from __future__ import annotations

from personae.models import Persona
from personae.survey.instrument import Instrument, Option, Question
from personae.survey.targets import Distribution, HumanTargets
from personae.testing.respondents import ScriptedRespondents

SCALE = ["strongly disagree", "disagree", "neither", "agree", "strongly agree"]
TOPICS = {
    "bread": "Fresh bread from the corner bakery is worth the queue.",
    "parks": "City parks are kept in good shape.",
    "taxes": "Local taxes are spent badly.",
    "trains": "The trains will be on time next year.",
    "music": "Street musicians make the town livelier.",
    "rivers": "The rivers are cleaner than a decade ago.",
    "salt": "Winter road salt does more harm than good.",
    "stars": "Children today will have better lives than their parents.",
}
REVERSED = {"taxes", "salt"}
OUTLOOK, REGION = "values_beliefs.attitude_to_change", "work.union_member"
OPT, PES = "embraces change", "resists change"
REVISABLE = {OUTLOOK: [OPT, PES]}


def instrument() -> Instrument:
    questions = [Question(id=f"q_{k}", type="likert", text=t, options=[Option(code=s, label=s) for s in SCALE]) for k, t in TOPICS.items()]
    return Instrument(name="synthetic", randomize_options=False, questions=questions)


def rules() -> dict:
    up = {"strongly agree": 6, "agree": 3, "neither": 0.5, "disagree": 0.25, "strongly disagree": 0.25}
    down = {s: up[SCALE[4 - i]] for i, s in enumerate(SCALE)}
    out = {}
    for k in TOPICS:
        opt, pes = (down, up) if k in REVERSED else (up, down)
        out[f"q_{k}"] = {"by": {OUTLOOK: {OPT: opt, PES: pes}}}
    return out


def respondents(inst: Instrument, seed: int = 0, midpoint_bias: float = 0.0) -> ScriptedRespondents:
    return ScriptedRespondents(inst, rules(), seed=seed, midpoint_bias=midpoint_bias)


HUMANS = {"yes": {PES: 0.8, OPT: 0.2}, "no": {PES: 0.5, OPT: 0.5}}
HUMAN_REGIONS = {"yes": 0.5, "no": 0.5}


def targets(inst: Instrument, model: ScriptedRespondents) -> HumanTargets:
    out = HumanTargets(source="synthetic: the known answer model", kind="aggregate")
    for q in inst.questions:
        overall: dict[str, float] = {}
        for region, mix in HUMANS.items():
            cell: dict[str, float] = {}
            for outlook, share in mix.items():
                for code, p in model.probabilities(q.id, {OUTLOOK: outlook}).items():
                    cell[code] = cell.get(code, 0.0) + share * p
                    overall[code] = overall.get(code, 0.0) + share * p * HUMAN_REGIONS[region]
            out.add(q.id, {REGION: region}, Distribution(shares=cell, n=1000 * HUMAN_REGIONS[region]))
        out.add(q.id, {}, Distribution(shares=overall, n=1000))
    return out


def population(members: int = 16, others: int = 8) -> list[Persona]:
    """Every union member embraces change; non-members half and half (each persona its own draws: ``panel.number``)."""
    people = []
    for i in range(members + others):
        region = "yes" if i < members else "no"
        outlook = OPT if region == "yes" or (i - members) % 2 == 0 else PES
        people.append(Persona(name=f"Respondent {i}", description=f"Someone who {outlook}; union member: {region}.",
                              attributes={REGION: region, OUTLOOK: outlook, "panel.number": str(i)}))
    return people


def write_experiment(tmp_path, model: dict, *, name: str = "refine-test", members: int = 16, others: int = 8):
    """An experiment file: the synthetic instrument and targets as files, the wrong population as a personas file."""
    import json

    import yaml

    inst = instrument()
    model_answers = respondents(inst, seed=3)
    (tmp_path / "instrument.yaml").write_text(yaml.safe_dump(inst.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    tgt = targets(inst, model_answers)
    questions = {}
    for qid, cells in tgt.cells.items():
        entry: dict = {"cells": []}
        for label, dist in cells.items():
            if label == "overall":
                entry["overall"] = {"n": dist.n, "distribution": dist.shares}
            else:
                (_, value), = tgt.cell_attributes[qid][label].items()
                entry["cells"].append({"where": {"union_member": value}, "n": dist.n, "distribution": dist.shares})
        questions[qid] = entry
    (tmp_path / "targets.yaml").write_text(yaml.safe_dump({"kind": "aggregate", "source": "synthetic", "questions": questions}, sort_keys=False))
    (tmp_path / "personas.jsonl").write_text("".join(json.dumps(p.model_dump(mode="json")) + "\n" for p in population(members, others)))
    data = {"name": name, "seed": 5, "models": {"default": model}, "personas_file": "personas.jsonl",
            "survey": {"instrument": "instrument.yaml", "targets": "targets.yaml", "mode": "direct", "min_cell": 1, "concurrency": 4}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
