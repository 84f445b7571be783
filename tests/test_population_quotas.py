"""Quotas: largest remainder, IPF raking, exact integerisation, and exact quotas in generated populations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from personae.population import PopulationSpec, integerise, ipf, largest_remainder, plan_population, sample_population


def test_largest_remainder_awkward_sizes():
    assert largest_remainder([1 / 3, 1 / 3, 1 / 3], 7).tolist() == [3, 2, 2]
    assert largest_remainder([0.5, 0.5], 7).tolist() == [4, 3]
    assert largest_remainder([0.2, 0.0, 0.8], 1).tolist() == [0, 0, 1]
    assert largest_remainder([0.25, 0.25, 0.25, 0.25], 0).tolist() == [0, 0, 0, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        shares = rng.dirichlet(np.ones(rng.integers(1, 9)))
        total = int(rng.integers(1, 500))
        counts = largest_remainder(shares, total)
        assert counts.sum() == total
        assert np.all(np.abs(counts - shares * total) < 1.0)  # never more than one off the exact quota


def test_ipf_converges_to_marginals_with_structure_and_zeros():
    rng = np.random.default_rng(1)
    seed = rng.random((4, 3, 5)) + 0.05
    seed[0, 0, :] = 0.0  # structural zeros stay zero
    seed[3, 2, 4] = 0.0
    margins = [np.array([10.0, 30.0, 40.0, 20.0]), np.array([25.0, 50.0, 25.0]), np.array([10.0, 20.0, 30.0, 20.0, 20.0])]
    table, iterations, error = ipf(seed, margins)
    assert error < 1e-8
    assert iterations > 1
    for axis, target in enumerate(margins):
        other = tuple(a for a in range(3) if a != axis)
        np.testing.assert_allclose(table.sum(axis=other), target, atol=1e-8)
    assert table[0, 0, :].sum() == 0.0 and table[3, 2, 4] == 0.0
    # the odds ratios of the seed survive raking (that is what IPF preserves)
    ratio_seed = seed[1, 1, 1] * seed[2, 2, 2] / (seed[1, 2, 1] * seed[2, 1, 2])
    ratio_table = table[1, 1, 1] * table[2, 2, 2] / (table[1, 2, 1] * table[2, 1, 2])
    assert ratio_table == pytest.approx(ratio_seed, rel=1e-6)


def test_integerise_meets_every_integer_margin_exactly():
    rng = np.random.default_rng(2)
    for trial in range(50):
        shape = tuple(int(n) for n in rng.integers(2, 5, size=3))
        total = int(rng.integers(1, 300))
        targets = [largest_remainder(rng.dirichlet(np.ones(n)), total) for n in shape]
        table, _, _ = ipf(rng.random(shape) + 0.01, [t.astype(float) for t in targets])
        counts = integerise(table, targets, total)
        assert counts.sum() == total
        for axis, target in enumerate(targets):
            other = tuple(a for a in range(3) if a != axis)
            assert counts.sum(axis=other).tolist() == target.tolist(), trial
        assert np.all(counts >= 0)


def test_joint_quota_seven_people_over_three_cells_is_exact():
    spec = PopulationSpec(
        size=7,
        seed=3,
        deep_attributes=3,
        quotas={"joint": {"dims": ["age_band", "gender"], "cells": [
            {"age_band": "18-24", "gender": "female", "share": 1 / 3},
            {"age_band": "35-44", "gender": "male", "share": 1 / 3},
            {"age_band": "65-74", "gender": "female", "share": 1 / 3},
        ]}},
    )
    plan = plan_population(spec)
    assert [c.target for c in plan.quotas.cells] == [3, 2, 2]
    people = sample_population(spec)
    got = Counter((p.attributes["demographics.age_band"], p.attributes["demographics.gender"]) for p in people)
    assert got == {("18-24", "female"): 3, ("35-44", "male"): 2, ("65-74", "female"): 2}
    for p in people:  # the sampled age agrees with the quota's age band
        low, high = map(int, p.attributes["demographics.age_band"].split("-"))
        assert low <= p.age <= high


def test_marginal_quotas_exact_with_awkward_size_and_raking():
    spec = PopulationSpec(
        size=37,
        seed=11,
        deep_attributes=2,
        quotas={"marginals": {
            "age_band": {"18-24": 0.3, "45-54": 0.3, "75-90": 0.4},
            "gender": {"female": 0.5, "male": 0.5},
            "employment_status": {"student": 0.2, "employed full-time": 0.5, "retired": 0.3},
        }},
    )
    plan = plan_population(spec)
    targets = plan.quotas.marginal_targets
    assert targets["demographics.gender"] == {"female": 19, "male": 18}
    assert sum(targets["demographics.age_band"].values()) == 37
    assert plan.quotas.ipf_max_error < 1e-6
    people = sample_population(spec)
    assert len(people) == 37
    for path, wanted in targets.items():
        assert dict(Counter(p.attributes[path] for p in people)) == {k: v for k, v in wanted.items() if v}, path
    # raking keeps the taxonomy's structure: no 18-24 retirees, no 75+ students
    pairs = Counter((p.attributes["demographics.age_band"], p.attributes["work.employment_status"]) for p in people)
    assert pairs[("18-24", "retired")] == 0
    assert pairs[("75-90", "student")] == 0


def test_joint_and_marginals_combined():
    spec = PopulationSpec(
        size=50,
        seed=4,
        deep_attributes=0,
        quotas={
            "joint": {"dims": ["gender", "region"], "cells": [
                {"gender": "female", "region": "Oceania", "share": 0.3},
                {"gender": "male", "region": "Oceania", "share": 0.2},
                {"gender": "female", "region": "East Asia", "share": 0.25},
                {"gender": "male", "region": "East Asia", "share": 0.25},
            ]},
            "marginals": {"settlement": {"big city": 0.62, "rural area": 0.38}},
            "prior": "uniform",
        },
    )
    people = sample_population(spec)
    joint = Counter((p.attributes["demographics.gender"], p.attributes["demographics.region"]) for p in people)
    assert joint == {("female", "Oceania"): 15, ("male", "Oceania"): 10, ("female", "East Asia"): 13, ("male", "East Asia"): 12}
    assert Counter(p.attributes["demographics.settlement"] for p in people) == {"big city": 31, "rural area": 19}
    assert {p.location for p in people if p.attributes["demographics.region"] == "Oceania"} <= {"Australia", "New Zealand"}


def test_no_quotas_means_one_cell():
    plan = plan_population(PopulationSpec(size=5, seed=0, deep_attributes=0))
    assert len(plan.quotas.cells) == 1 and plan.quotas.cells[0].target == 5
    assert sorted(plan.sequence.tolist()) == [0] * 5
