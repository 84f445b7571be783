"""Bad taxonomy and spec/quota files give ConfigError naming the file and the field."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from personae.errors import ConfigError
from personae.population import PopulationSpec, load_population_spec, load_taxonomy, plan_population, sample_population


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _spec_error(tmp_path: Path, text: str) -> ConfigError:
    spec_file = _write(tmp_path / "population.yaml", text)
    with pytest.raises(ConfigError) as info:
        plan_population(load_population_spec(spec_file))
    err = info.value
    assert err.file == str(spec_file)
    pickle.loads(pickle.dumps(err))  # errors cross process boundaries
    return err


# ---- spec / quota files ----------------------------------------------------------------


def test_unknown_attribute_in_quota(tmp_path):
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          marginals:
            agee_band: {18-24: 1.0}
    """)
    assert err.field == "quotas.marginals.agee_band"
    assert "unknown attribute" in str(err) and "age_band" in str(err)  # did-you-mean


def test_unknown_value_in_quota(tmp_path):
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          marginals:
            gender: {femal: 0.5, male: 0.5}
    """)
    assert err.field == "quotas.marginals.gender.femal"
    assert "female" in str(err)


def test_shares_not_summing_to_one(tmp_path):
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          marginals:
            gender: {female: 0.5, male: 0.4}
    """)
    assert err.field == "quotas.marginals.gender"
    assert "sum to 0.9" in str(err)
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          joint:
            dims: [age_band, gender]
            cells:
              - {age_band: 18-24, gender: female, share: 0.7}
              - {age_band: 18-24, gender: male, share: 0.7}
    """)
    assert err.field == "quotas.joint.cells[*].share"


def test_impossible_quota_under_rules(tmp_path):
    # every persona is 18-24, and retirees must be at least 50 (packaged rule)
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          marginals:
            age_band: {18-24: 1.0}
            employment_status: {retired: 0.5, student: 0.5}
    """)
    assert "impossible quota" in str(err)
    assert err.field == "quotas.marginals.employment_status"
    err = _spec_error(tmp_path, """
        size: 10
        quotas:
          joint:
            dims: [age_band, employment_status]
            cells:
              - {age_band: 18-24, employment_status: retired, share: 1.0}
    """)
    assert "impossible quota" in str(err) and "retired" in str(err)
    # a user rule can make a cell impossible too
    err = _spec_error(tmp_path, """
        size: 4
        rules: ["if gender == male then region != Oceania"]
        quotas:
          joint:
            dims: [gender, region]
            cells:
              - {gender: male, region: Oceania, share: 1.0}
    """)
    assert "impossible quota" in str(err)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("size: -5", "size"),
        ("size: many", "size"),
        ("size: 10\nseed: -1", "seed"),
        ("size: 10\ndeep_attributes: [1, 2]", "deep_attributes"),
        ("size: 10\nquotas:\n  marginals:\n    gender: {female: half, male: 0.5}", "quotas.marginals.gender.female"),
        ("size: 10\nquotas: [1, 2]", "quotas"),
        ("size: 10\ndedup_threshold: 1.5", "dedup_threshold"),
        ("size: 10\nsurprise: 1", "surprise"),
    ],
)
def test_wrong_types_and_values(tmp_path, body, field):
    spec_file = _write(tmp_path / "population.yaml", body + "\n")
    with pytest.raises(ConfigError) as info:
        load_population_spec(spec_file)
    assert info.value.file == str(spec_file)
    assert info.value.field == field


def test_spec_top_level_must_be_mapping(tmp_path):
    spec_file = _write(tmp_path / "population.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level"):
        load_population_spec(spec_file)


def test_bad_rule_in_spec(tmp_path):
    err = _spec_error(tmp_path, """
        size: 5
        rules: ["if age < 18 then occupation in [astronaut]"]
    """)
    assert err.field == "rules[0]"
    assert "astronaut" in str(err)
    err = _spec_error(tmp_path, """
        size: 5
        rules: ["if agge < 18 then occupation in [student]"]
    """)
    assert "unknown attribute 'agge'" in str(err)
    err = _spec_error(tmp_path, """
        size: 5
        rules: ["gender < 3"]
    """)
    assert "numeric" in str(err)


# ---- taxonomy files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ("attributes:\n  g:\n    a: {type: colour, values: [x]}\n", "attributes.g.a.type", "colour"),
        ("attributes:\n  g:\n    a: {type: categorical}\n", "attributes.g.a", "needs 'values'"),
        ("attributes:\n  g:\n    a: {type: int, range: [5, 1]}\n", "attributes.g.a", "exceeds"),
        ("attributes:\n  g:\n    a: '@nope'\n", "attributes.g.a.values", "unknown value set"),
        ("attributes:\n  g:\n    a: [x, x]\n", "attributes.g.a.values", "repeated"),
        ("attributes:\n  g:\n    a: {type: categorical, values: [x, y], when: [{if: 'b == 1', values: [x]}]}\n", "attributes.g.a.when[0].if", "unknown attribute 'b'"),
        ("attributes:\n  g:\n    a: [x, y]\n    b: {type: categorical, values: [p], when: [{if: 'a == z', values: [p]}]}\n", "attributes.g.b.when[0].if", "unknown value 'z'"),
        ("attributes:\n  g:\n    a: {type: text}\n", "attributes.g.a", "hint"),
        ("attributes:\n  g:\n    a: 42\n", "attributes.g.a", "expected a group"),
        ("attributes:\n  g:\n    layer: soul\n    a: [x]\n", "attributes.g.layer", "layer"),
        ("attributes:\n  g:\n    a: [x]\nrules: ['if a == x then a == y']\n", "rules[0]", "unknown value 'y'"),
        ("attributes:\n  g:\n    a: [x]\npersona_fields: {nickname: a}\n", "persona_fields.nickname", "unknown persona field"),
        ("attributes:\n  g:\n    a: [x]\npersona_fields: {age: g.zz}\n", "persona_fields.age", "unknown attribute"),
        ("attrs: {}\n", "attrs", "no such field"),
        (
            "attributes:\n  g:\n    tier: core\n    a: {type: categorical, values: [x, y], when: [{if: 'b == p', values: [x]}]}\n"
            "    b: {type: categorical, values: [p, q], when: [{if: 'a == x', values: [p]}]}\n",
            "attributes.g.a",
            "cycle",
        ),
    ],
)
def test_bad_taxonomy_files(tmp_path, body, field, needle):
    path = _write(tmp_path / "taxonomy.yaml", "extends: none\n" + body)
    with pytest.raises(ConfigError) as info:
        load_taxonomy(path)
    err = info.value
    assert err.file == str(path), str(err)
    assert err.field == field, str(err)
    assert needle in str(err)


def test_bad_taxonomy_named_by_spec(tmp_path):
    _write(tmp_path / "tax.yaml", "attributes:\n  work:\n    occupation: {type: categorical, values: {a: -1}}\n")
    spec_file = _write(tmp_path / "population.yaml", "size: 5\ntaxonomy: tax.yaml\n")
    with pytest.raises(ConfigError) as info:
        plan_population(load_population_spec(spec_file))
    assert info.value.file == str((tmp_path / "tax.yaml").resolve())
    assert info.value.field == "attributes.work.occupation.values"


def test_user_taxonomy_extends_replaces_and_removes(tmp_path):
    path = _write(tmp_path / "tax.yaml", """
        remove: [interests.sports]
        attributes:
          demographics:
            gender: {type: categorical, values: {female: 1, male: 0}}
          hobbies:
            layer: life_context
            tier: core
            sourdough: {type: categorical, values: [never, weekly]}
        rules:
          - "if sourdough == weekly then age >= 30"
    """)
    tax = load_taxonomy(path)
    base = load_taxonomy()
    assert "hobbies.sourdough" in tax.by_path
    assert not any(p.startswith("interests.sports.") for p in tax.by_path)
    assert len(tax) == len(base) - 13 + 1
    assert len(tax.rules) == len(base.rules) + 1
    people = sample_population(PopulationSpec(size=40, seed=1, taxonomy=path, deep_attributes=5))
    assert {p.gender for p in people} == {"female"}
    assert all(p.age >= 30 for p in people if p.attributes["hobbies.sourdough"] == "weekly")
    assert {p.attributes["hobbies.sourdough"] for p in people} == {"never", "weekly"}
