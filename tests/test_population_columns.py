"""Vectorised sampling (personae/population/columns.py): exact quotas, every rule, taxonomy weights, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from personae.population import PopulationSpec, plan_population, sample_population, violations
from personae.population.columns import CHUNK, ColumnSampler

N = 20_000
QUOTAS = {
    "marginals": {
        "age_band": {"18-24": 0.12, "25-34": 0.18, "35-44": 0.17, "45-54": 0.17, "55-64": 0.16, "65-74": 0.12, "75-90": 0.08},
        "gender": {"female": 0.505, "male": 0.48, "non-binary": 0.015},
    }
}
RULES = [
    "if employment_status == student then age <= 30",
    "if occupation == farmer then settlement in [rural area, small town]",
    {"when": "region == Oceania", "then": {"religion": {"not_in": ["Hindu", "Sikh"]}}},
    "if has_children == yes then number_of_children <= 3",
]


@pytest.fixture(scope="module")
def drawn():
    """One vectorised chunk of 20,000 personas under quotas and extra rules (as the engine draws it)."""
    spec = PopulationSpec(size=N, seed=7, deep_attributes=40, quotas=QUOTAS, rules=RULES, llm_validate=False, craft=False)
    plan = plan_population(spec)
    fixed = [plan.quotas.cells[plan.cell_of(i)].values for i in range(N)]
    chunk = ColumnSampler(plan.sampler).sample_chunk(range(N), fixed, 0)
    return plan, fixed, [chunk[i] for i in range(N)]


def test_every_rule_holds_and_quotas_are_exact_on_20k(drawn):
    plan, fixed, people = drawn
    assert N <= CHUNK and all(p is not None for p in people)
    assert [p for p in people if violations(plan.rules, p)] == []
    # each persona keeps its quota cell's values, so every cell gets exactly its target
    assert all(all(p[k] == v for k, v in cell.items()) for p, cell in zip(people, fixed))
    counts = Counter(tuple(sorted((k, p[k]) for k in cell)) for p, cell in zip(people, fixed))
    assert {tuple(sorted(c.values.items())): c.target for c in plan.quotas.cells} == dict(counts)
    for path, targets in plan.quotas.marginal_targets.items():
        assert Counter(p[path] for p in people) == Counter(targets)
    # the rules really bit: students are young, farmers rural
    students = [p for p in people if p.get("work.employment_status") == "student"]
    assert students and max(p["demographics.age"] for p in students) <= 30


def test_unconditioned_attributes_follow_their_taxonomy_weights(drawn):
    """Chi-square goodness of fit for every attribute whose distribution depends on nothing."""
    plan, _, people = drawn
    sampler = plan.sampler
    leaves = [leaf for leaf in plan.taxonomy.leaves if leaf.type == "categorical" and not sampler._keys[leaf.path] and leaf.path not in plan.quotas.dims]
    wanted = {leaf.path for leaf in leaves}
    counts: dict[str, Counter] = {path: Counter() for path in wanted}
    for p in people:
        for path, value in p.items():
            if path in wanted:
                counts[path][value] += 1
    tested = 0
    for leaf in leaves:
        got = counts[leaf.path]
        n = sum(got.values())
        weights = np.asarray(leaf.weights, dtype=float)
        expected = weights / weights.sum() * n
        if n < 1000 or expected.min() < 5:  # too few draws for the chi-square approximation
            continue
        observed = np.array([got.get(v, 0) for v in leaf.values], dtype=float)
        assert observed.sum() == n, f"{leaf.path} drew a value outside its list"
        p_value = stats.chisquare(observed, expected).pvalue
        assert p_value > 1e-4, f"{leaf.path}: p = {p_value:.2g}, observed {observed.tolist()} vs expected {np.round(expected, 1).tolist()}"
        tested += 1
    assert tested >= 5  # core attributes (all 20k draws) and frequently picked deep ones


def test_structure_matches_the_scalar_sampler(drawn):
    plan, _, people = drawn
    tax = plan.taxonomy
    core = {leaf.path for leaf in tax.leaves if leaf.tier == "core"}
    deep = [sum(1 for k in p if tax.by_path[k].tier == "deep") for p in people]
    assert max(deep) == 40 and np.mean(deep) > 39  # progressive picks reach the target
    assert all(core - set(p) <= {leaf.path for leaf in tax.leaves if leaf.applies_if is not None} for p in people[:2000])
    for leaf in tax.leaves:
        if leaf.type == "multi" and leaf.exclusive:
            for p in people:
                value = p.get(leaf.path)
                if value is not None and set(value) & leaf.exclusive:
                    assert len(value) == 1, (leaf.path, value)
        if leaf.type == "int" and leaf.range is not None:
            values = [p[leaf.path] for p in people if leaf.path in p]
            assert all(isinstance(v, int) and leaf.range[0] <= v <= leaf.range[1] for v in values)


def test_vectorised_population_is_deterministic_per_seed_and_resumes(tmp_path):
    import asyncio

    from personae.jsonl import read_jsonl
    from personae.models import Persona
    from personae.population import generate_population

    spec = PopulationSpec(size=120, seed=4, deep_attributes=20, batch_size=50, quotas=QUOTAS, llm_validate=False, craft=False, dedup=False)
    first = [p.model_dump(mode="json") for p in sample_population(spec)]
    assert first == [p.model_dump(mode="json") for p in sample_population(spec)]
    assert first != [p.model_dump(mode="json") for p in sample_population(spec.model_copy(update={"seed": 5}))]
    # a run cut after 50 personas (mid-chunk, mid-batch boundary) resumes to the same population
    out = tmp_path / "pop"
    asyncio.run(generate_population(spec, gateway=None, embedder=None, qdrant=None, out_dir=out))
    whole = [p.model_dump(mode="json") for p in read_jsonl(out / "personas.jsonl", Persona)]
    assert whole == first
    lines = (out / "personas.jsonl").read_text().splitlines(keepends=True)
    (out / "personas.jsonl").write_text("".join(lines[:50]))
    asyncio.run(generate_population(spec, gateway=None, embedder=None, qdrant=None, out_dir=out))
    assert [p.model_dump(mode="json") for p in read_jsonl(out / "personas.jsonl", Persona)] == first
