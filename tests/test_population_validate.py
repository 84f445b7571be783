"""Validate → Revise: scripted LLM flags implausible personas; only flagged attributes change."""

from __future__ import annotations

import json
import random

import pytest

from personae.jsonl import read_jsonl, read_jsonl_dicts
from personae.llm import Gateway
from personae.llm.testing import ScriptedLLM, fake_from_schema
from personae.models import Persona
from personae.population import (
    Issue,
    LLMPlausibilityCheck,
    PersonaSampler,
    PopulationSpec,
    generate_population,
    load_taxonomy,
    persona_meta,
    plan_population,
    validate_and_revise,
)


def _listing(request) -> dict[str, str]:
    text = request.messages[-1].content
    out = {}
    for line in text.splitlines():
        if ": " in line and "." in line.split(": ", 1)[0] and " " not in line.split(": ", 1)[0]:
            key, value = line.split(": ", 1)
            out[key] = value
    return out


def _script(flag):
    """A scripted model: validator replies come from ``flag(attrs)``; other schemas get fake data."""

    def reply(request):
        if request.schema_name == "PlausibilityVerdict":
            return json.dumps({"issues": flag(_listing(request))})
        return json.dumps(fake_from_schema(request.json_schema, random.Random(request.messages[-1].content)))

    return reply


async def test_validate_revise_fixes_planted_implausible_persona():
    tax = load_taxonomy()
    sampler = PersonaSampler(tax, tax.rules, seed=0, deep_attributes=10)
    attrs = sampler.sample(0)
    attrs["life_context.preferences.diet"] = "vegan"
    attrs["interests.lifestyle.food_and_wine"] = "passionate"
    attrs["life_context.preferences.favourite_drink"] = "wine"
    planted = dict(attrs)

    def flag(listing):
        if listing.get("life_context.preferences.diet") == "vegan" and listing.get("life_context.preferences.favourite_drink") == "wine":
            return [{"attributes": ["favourite_drink", "nonexistent.attribute"], "problem": "this vegan's favourite drink contradicts the profile"}]
        return []

    llm = ScriptedLLM(_script(flag))
    check = LLMPlausibilityCheck(Gateway(llm), tax)
    outcome = await validate_and_revise(attrs, sampler=sampler, llm=check, max_rounds=3, index=0, attempt=0, seed=0)
    assert outcome.accepted
    assert outcome.revised == ["life_context.preferences.favourite_drink"]
    assert outcome.attrs["life_context.preferences.favourite_drink"] != "wine"
    # nothing else changed
    assert {k: v for k, v in outcome.attrs.items() if k != "life_context.preferences.favourite_drink"} == {k: v for k, v in planted.items() if k != "life_context.preferences.favourite_drink"}
    assert outcome.history[0] and outcome.history[0][0].source == "llm"
    assert llm.calls >= 2
    assert all(r.schema_name == "PlausibilityVerdict" for r in llm.requests)


async def test_rule_validator_and_custom_validator_revise_without_llm():
    tax = load_taxonomy()
    sampler = PersonaSampler(tax, tax.rules, seed=0, deep_attributes=0)
    attrs = sampler.sample(1, {"demographics.age_band": "18-24"})
    attrs["work.employment_status"] = "retired"  # planted: breaks "retired → age >= 50"
    attrs["work.occupation"] = "retiree"

    def no_pilots(a):
        return [Issue(("work.occupation",), "no pilots please", "custom")] if a.get("work.occupation") == "pilot" else []

    outcome = await validate_and_revise(attrs, sampler=sampler, validators=[no_pilots], fixed={"demographics.age_band"}, max_rounds=3, index=1)
    assert outcome.accepted
    assert outcome.history[0][0].source == "rule"
    assert outcome.attrs["work.employment_status"] != "retired"
    assert not sampler.check(outcome.attrs)
    assert outcome.attrs["demographics.age_band"] == "18-24"


async def test_bounded_rounds_reject_when_llm_keeps_flagging():
    tax = load_taxonomy()
    sampler = PersonaSampler(tax, tax.rules, seed=0, deep_attributes=5)
    llm = ScriptedLLM(_script(lambda listing: [{"attributes": ["demographics.gender"], "problem": "never happy"}]))
    outcome = await validate_and_revise(sampler.sample(2), sampler=sampler, llm=LLMPlausibilityCheck(Gateway(llm), tax), fixed={"demographics.gender"}, max_rounds=2, index=2)
    assert not outcome.accepted
    assert llm.calls == 1  # the flagged attribute is a quota attribute: nothing to revise, rejected at once
    llm2 = ScriptedLLM(_script(lambda listing: [{"attributes": ["work.occupation"], "problem": "never happy"}]))
    outcome = await validate_and_revise(sampler.sample(2), sampler=sampler, llm=LLMPlausibilityCheck(Gateway(llm2), tax), max_rounds=2, index=2)
    assert not outcome.accepted and llm2.calls == 3 and outcome.rounds == 2


async def test_engine_revises_flagged_personas_and_keeps_rejects(tmp_path, hashing_embedder):
    def flag(listing):
        if listing.get("work.occupation") in ("cleaner", "cook", "construction worker", "call centre agent"):
            return [{"attributes": ["work.occupation"], "problem": f"too many {listing['work.occupation']}s"}]
        if listing.get("demographics.gender") == "non-binary":
            return [{"attributes": ["demographics.gender"], "problem": "quota attribute flagged"}]
        return []

    llm = ScriptedLLM(_script(flag))
    spec = PopulationSpec(size=40, seed=6, deep_attributes=8, craft=True, max_revise_rounds=4, batch_size=16,
                          quotas={"marginals": {"gender": {"female": 0.45, "male": 0.45, "non-binary": 0.1}}})
    report = await generate_population(spec, gateway=Gateway(llm), embedder=hashing_embedder, qdrant=None, out_dir=tmp_path)
    people = read_jsonl(tmp_path / "personas.jsonl", Persona)
    assert len(people) == 40 and report.quotas_exact
    assert report.llm_validated and report.crafted
    kept_flagged = [p for p in people if p.occupation in ("cleaner", "cook", "construction worker", "call centre agent")]
    assert not kept_flagged
    revised = [p for p in people if persona_meta(p)["revised"]]
    assert revised and report.revised_personas == len(revised)
    assert report.revised_attributes.get("work.occupation") == len(revised)
    # a revised persona differs from its original sample only in the occupation
    plan = plan_population(spec)
    for p in revised:
        meta = persona_meta(p)
        original = plan.sampler.sample(meta["index"], plan.quotas.cells[meta["cell_index"]].values, meta["attempt"])
        changed = {k for k in original if original[k] != p.attributes.get(k)}
        assert changed <= {"work.occupation"}, changed
    # non-binary personas are flagged on a quota attribute: they cannot be revised, so they end up unresolved
    nb = [p for p in people if p.gender == "non-binary"]
    assert len(nb) == 4 and all(persona_meta(p).get("unresolved") for p in nb) and report.unresolved == 4
    rejects = [r for _, r in read_jsonl_dicts(tmp_path / "rejects.jsonl")]
    assert rejects and all(r["source"] == "llm" and r["reason"] for r in rejects)
    assert report.rejects.get("llm") == len(rejects)
    assert report.validity_rate < 1.0
    assert report.usage.get("validator.calls", 0) > 40 and report.usage.get("crafter.calls", 0) >= 40


@pytest.mark.parametrize("reply", ["not json at all", '{"issues": "nope"}'])
async def test_broken_validator_replies_do_not_stall(reply):
    tax = load_taxonomy()
    sampler = PersonaSampler(tax, tax.rules, seed=0, deep_attributes=3)
    llm = ScriptedLLM(lambda request: reply)
    outcome = await validate_and_revise(sampler.sample(4), sampler=sampler, llm=LLMPlausibilityCheck(Gateway(llm, max_retries=0), tax), index=4)
    assert outcome.accepted and outcome.llm_failed
