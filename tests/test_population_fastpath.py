"""The batch steps of the non-LLM population path give what the one-by-one steps give.

Column decoding, mapping to personas (looped template render, orjson content hash, trusted
construction), JSON lines by orjson and the report's batch counting are each checked
against the reference one-persona-at-a-time code on a real sampled chunk.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import math
import uuid

import numpy as np
import pytest

from personae.models import BigFive, Persona
from personae.population import PopulationSpec, plan_population
from personae.population.columns import ColumnSampler
from personae.population.mapping import persona_json, to_persona, to_personas
from personae.population.report import ReportBuilder
from personae.prompts import PromptSet

N = 3000
QUOTAS = {"marginals": {"gender": {"female": 0.5, "male": 0.48, "non-binary": 0.02}}}


@pytest.fixture(scope="module")
def chunk():
    spec = PopulationSpec(size=N, seed=11, deep_attributes=30, quotas=QUOTAS, sampling={"mode": "coverage", "axes": ["region"]}, llm_validate=False, craft=False)
    plan = plan_population(spec)
    fixed = [{**plan.quotas.cells[plan.cell_of(i)].values, **plan.coverage.values_for(i)} for i in range(N)]
    drawn = ColumnSampler(plan.sampler).sample_chunk(range(N), fixed, 0)
    return plan, drawn, [drawn[i] for i in range(N)]


def _reference(block, row: int) -> dict | None:
    """One row read straight from the block's store, value by value, in the order values were set."""
    if not block.alive[row]:
        return None
    owner, store = block.owner, block.store
    attrs: dict = {}
    deep = [owner._deep_paths[j] for j in block.steps[row].tolist() if j >= 0]
    for path in (*block.order_fixed[row], *block.core, *deep):
        if path in attrs:
            continue
        value = store.value(path, row)
        if value is not None:
            attrs[path] = int(value) if plan_type(owner, path) == "int" else (float(value) if owner.encs[path].kind == "num" else value)
    return attrs


def plan_type(owner, path: str) -> str:
    return owner.taxonomy.by_path[path].type


def test_window_decoding_matches_the_store_row_by_row(chunk):
    _, drawn, people = chunk
    assert all(p is not None for p in people)
    for pos in range(0, N, 7):
        block, row = drawn.where[pos]
        expected = _reference(block, row)
        assert people[pos] == expected
        assert list(people[pos]) == list(expected)  # same order: it decides the layer summaries and the JSON
        assert [type(v) for v in people[pos].values()] == [type(v) for v in expected.values()]
    # fixed (quota and coverage) values come first, then the core attributes
    assert list(people[0])[:2] == ["demographics.gender", "demographics.region"]
    # a second read of a persona is a fresh dict with the same content
    first = drawn[5]
    first["x"] = 1
    assert drawn[5] == people[5] and "x" not in drawn[5]


def test_batch_mapping_equals_validated_personas(chunk):
    plan, _, people = chunk
    sample = people[:400]
    metas = [{"index": i, "cell": {"gender": "male"}} for i in range(len(sample))]
    one_by_one = [to_persona(a, plan.taxonomy, seed=3, index=i, meta=m) for i, (a, m) in enumerate(zip(sample, metas))]
    batch = to_personas(sample, plan.taxonomy, seed=3, indices=range(len(sample)), metas=metas)
    assert batch == one_by_one
    assert [p.model_dump_json() for p in batch] == [p.model_dump_json() for p in one_by_one]
    assert all(Persona.model_validate(p.model_dump()) == p for p in batch[:50])  # they pass validation as built
    assert len({p.id for p in batch}) == len(batch) and all(p.description for p in batch)


def test_batch_mapping_hashes_odd_numbers_like_the_canonical_json(chunk):
    """Values orjson writes differently (tiny floats, huge ints, NaN) fall back to the canonical hash."""
    plan, _, people = chunk
    odd = []
    for k, value in enumerate([1e-7, 2**70, math.nan, 0.5, -3, ["a", "b"], {"nested": 1}]):
        attrs = dict(people[k])
        attrs["work.income_note"] = value
        odd.append(attrs)
    batch = to_personas(odd, plan.taxonomy, seed=0, indices=range(len(odd)), metas=[None] * len(odd))
    assert [p.id for p in batch] == [to_persona(a, plan.taxonomy, seed=0, index=i).id for i, a in enumerate(odd)]


def test_render_many_equals_render_and_falls_back(tmp_path):
    prompts = PromptSet()
    rows = [
        {"name": "Ana", "age": 31, "gender": "female", "location": "Chile", "settlement": None, "occupation": "nurse", "education": None,
         "traits": ["high openness"], "values": ["honesty"], "beliefs": [], "goals": ["travel"], "interests": ["chess"], "details": [("Diet", "vegan"), ("Pets", "a cat")]},
        {"name": "Bo", "age": None, "gender": None, "location": None, "settlement": "city", "occupation": None, "education": "PhD",
         "traits": [], "values": [], "beliefs": ["a; b"], "goals": [], "interests": [], "details": []},
    ]
    assert prompts.render_many("population_describe", rows) == [prompts.render("population_describe", **r) for r in rows]
    # a template that assigns or reads `loop` outside a for loop is rendered one by one, with the same result
    (tmp_path / "population_describe.j2").write_text("{% set who = name %}{{ who }}{% if loop is defined %} looped{% endif %}\n")
    custom = PromptSet(tmp_path)
    assert custom.render_many("population_describe", rows) == ["Ana", "Bo"]
    # a value holding the row separator cannot split the batch wrongly
    tricky = [dict(rows[0], name="A\x00B"), rows[1]]
    assert prompts.render_many("population_describe", tricky) == [prompts.render("population_describe", **r) for r in tricky]


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int


@pytest.mark.parametrize("value", [1e-7, 1e16, 0.1 + 0.2, -0.0, math.inf, math.nan, 2**63, 2**70, "é\u2028\x7f\x01", [1, "a", None], (1, 2), {"k": [True]}, uuid.UUID(int=7), _Colour.RED, _Point(1)])
def test_persona_json_is_pydantics_json(value):
    persona = Persona(name="Z", big_five=BigFive(openness=0.9), values=["v"], attributes={"a": value, "b": "x"}, description="d")
    line = persona_json(persona)
    assert line == persona.model_dump_json()
    assert Persona.model_validate(json.loads(line)).id == persona.id


def test_report_batch_counts_equal_one_by_one(chunk):
    plan, _, people = chunk
    personas = to_personas(people[:500], plan.taxonomy, seed=1, indices=range(500), metas=[{"cell_index": plan.cell_of(i), "revision_rounds": 0, "revised": []} for i in range(500)])
    one, batch = ReportBuilder(plan.taxonomy, plan.quotas, coverage=plan.coverage), ReportBuilder(plan.taxonomy, plan.quotas, coverage=plan.coverage)
    for p in personas:
        one.add(p)
    batch.add_many(personas[:123])
    batch.add_many(personas[123:])
    a, b = (r.finish(name="x", seed=1).model_dump() for r in (one, batch))
    assert a == b
    assert a["produced"] == 500 and a["distinct_2"] > 0 and a["mean_attributes"] > 30
    assert np.array_equal(one.cell_counts, batch.cell_counts) and one.cell_counts.sum() == 500


def test_big_five_mapped_in_any_order_or_in_part(chunk):
    """A taxonomy may map the traits in another order, or only some: the Big Five is what validation makes."""
    plan, _, people = chunk
    traits = dict(plan.taxonomy.persona_fields["big_five"])
    for mapping in (dict(reversed(traits.items())), {"openness": traits["openness"]}):
        taxonomy = copy.copy(plan.taxonomy)
        taxonomy.persona_fields = {**plan.taxonomy.persona_fields, "big_five": mapping}
        for i, (persona, attrs) in enumerate(zip(to_personas(people[:20], taxonomy, seed=0, indices=range(20), metas=[None] * 20), people)):
            expected = BigFive(**{k: min(1.0, max(0.0, float(attrs[p]))) for k, p in mapping.items()})
            assert persona.big_five == expected and list(persona.big_five.__dict__) == list(BigFive.model_fields)
            assert persona == to_persona(attrs, taxonomy, seed=0, index=i)
