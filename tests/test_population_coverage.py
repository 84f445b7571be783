"""Coverage mode: scrambled Sobol points over diversity axes, and the coverage metric in the report."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from personae.errors import ConfigError
from personae.ids import content_hash
from personae.population import PopulationSpec, generate_population, load_population_spec, load_taxonomy, plan_population, sample_population

AXES = ["age_band", "gender", "settlement"]  # 7 × 3 × 5 = 105 cells, none conditioned on another


def _spec(mode: str, size: int, seed: int = 3, axes=AXES, **extra) -> PopulationSpec:
    return PopulationSpec(size=size, seed=seed, deep_attributes=0, dedup=False, llm_validate=False, craft=False, sampling={"mode": mode, "axes": axes}, **extra)


async def _report(spec: PopulationSpec, tmp_path):
    return await generate_population(spec, gateway=None, embedder=None, qdrant=None, out_dir=tmp_path)


async def test_coverage_mode_occupies_more_cells_than_iid_at_the_same_n(tmp_path):
    covered = (await _report(_spec("coverage", 70), tmp_path / "coverage")).coverage
    iid = (await _report(_spec("quota", 70), tmp_path / "quota")).coverage
    assert (covered.cells, covered.n, iid.n) == (105, 70, 70)
    assert covered.axes == ["demographics.age_band", "demographics.gender", "demographics.settlement"]
    # seeded, so exact: Sobol points 51 cells; the population sampled iid (vectorised draw) 43; the report's iid baseline 37
    assert (covered.occupied, iid.occupied, covered.iid_occupied) == (51, 43, 37)
    assert covered.occupied_share == pytest.approx(51 / 105) and covered.attainable_share == pytest.approx(70 / 105)
    assert covered.discrepancy < covered.iid_discrepancy and covered.discrepancy < iid.discrepancy
    assert covered.fallbacks == 0 and covered.mode == "coverage" and iid.mode == "quota"
    saved = json.loads((tmp_path / "coverage" / "population_report.json").read_text())
    assert saved["coverage"]["occupied"] == 51


def test_coverage_marginals_follow_the_taxonomy_weights():
    tax = load_taxonomy()
    people = sample_population(_spec("coverage", 256, seed=11), taxonomy=tax)
    for name in AXES:
        leaf = tax.by_path[tax.resolve(name)]
        got = Counter(p.attributes[leaf.path] for p in people)
        total = sum(leaf.weights)
        for value, weight in zip(leaf.values, leaf.weights):
            assert abs(got[value] / 256 - weight / total) <= 0.01, (leaf.path, value, got[value])


def test_coverage_is_reproducible_with_a_seed_and_changes_with_it():
    def attrs(seed):
        return [{k: p.attributes[f"demographics.{k}"] for k in AXES} for p in sample_population(_spec("coverage", 40, seed=seed))]

    assert attrs(5) == attrs(5)
    assert attrs(5) != attrs(6)


def test_numeric_axis_is_binned_and_conditioned_attributes_follow_the_axes():
    spec = _spec("coverage", 64, axes=["region", {"attribute": "openness", "bins": 4}])
    plan = plan_population(spec)
    assert plan.coverage.cells == 10 * 4
    people = sample_population(spec)
    report = plan.coverage.report(Counter(plan.coverage.cell_of(p.attributes) for p in people))
    assert (report.occupied, report.iid_occupied) == (30, 24)  # equal-width bins of a normal trait: the tails are thin
    lo, hi = plan.taxonomy.by_path["personality.big_five.openness"].range
    assert all(lo <= p.attributes["personality.big_five.openness"] <= hi for p in people)
    north_america = {"United States", "Canada"}
    for p in people:  # country is not an axis: it is sampled as today, conditioned on the covered region
        if p.attributes["demographics.region"] == "North America":
            assert p.attributes["demographics.country"] in north_america


@pytest.mark.parametrize(
    ("sampling", "field", "words"),
    [
        ({"mode": "coverage", "axes": ["gender", "no_such_attribute"]}, "sampling.axes[1]", "unknown sampling axis"),
        ({"mode": "coverage", "axes": ["region", "country"]}, "sampling.axes[1]", "conditioned on axis demographics.region"),
        ({"mode": "coverage", "axes": ["age"]}, "sampling.axes[0]", "use a banded categorical"),
        ({"mode": "coverage", "axes": ["gender", "gender"]}, "sampling.axes[1]", "given twice"),
        ({"mode": "coverage", "axes": [{"attribute": "gender", "bins": 3}]}, "sampling.axes[0].bins", "numeric axes"),
    ],
)
def test_bad_axes_are_config_errors_naming_the_field(tmp_path, sampling, field, words):
    path = tmp_path / "population.yaml"
    path.write_text(json.dumps({"size": 10, "sampling": sampling}))
    spec = load_population_spec(path)
    with pytest.raises(ConfigError) as info:
        plan_population(spec)
    assert info.value.field == field and words in str(info.value) and str(path) in str(info.value)


def test_coverage_needs_axes_and_leaves_quota_attributes_alone(tmp_path):
    path = tmp_path / "population.yaml"
    path.write_text(json.dumps({"size": 10, "sampling": {"mode": "coverage"}}))
    with pytest.raises(ConfigError) as info:
        load_population_spec(path)
    assert info.value.field.startswith("sampling")
    spec = _spec("coverage", 10, quotas={"marginals": {"gender": {"female": 0.5, "male": 0.5}}})
    with pytest.raises(ConfigError, match="also a quota attribute"):
        plan_population(spec)


def test_default_sampling_keeps_the_fingerprint_of_older_specs():
    plain = PopulationSpec(size=5)
    assert plain.fingerprint() == content_hash([plain.model_dump(mode="json", exclude={"batch_size", "sampling"})], length=16)
    assert plain.fingerprint() != _spec("coverage", 5).fingerprint()
    assert plain.fingerprint() == PopulationSpec(size=5, sampling={"mode": "quota"}).fingerprint()


async def test_an_axis_combination_a_rule_forbids_falls_back_to_the_sampler(tmp_path):
    rule = "if age_band == 75-90 then settlement in [big city, suburb]"
    spec = _spec("coverage", 120, rules=[rule])
    report = await _report(spec, tmp_path)
    people = [json.loads(line) for line in (tmp_path / "personas.jsonl").read_text().splitlines()]
    old = [p["attributes"] for p in people if p["attributes"]["demographics.age_band"] == "75-90"]
    assert old and all(a["demographics.settlement"] in ("big city", "suburb") for a in old)
    fell_back = [p for p in people if p["attributes"]["_population"].get("coverage_fallback")]
    assert report.coverage.fallbacks == len(fell_back) > 0
    assert all(p["attributes"]["_population"]["coverage_fallback"] == 1 for p in fell_back)  # only the trailing axis (settlement) was left to the sampler
