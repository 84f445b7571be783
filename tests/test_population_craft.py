"""Crafting (description, speaking style, SPeCtrum layers) and text-to-persona."""

from __future__ import annotations

import json

from personae.llm import Gateway
from personae.llm.testing import FakeLLM, ScriptedLLM
from personae.population import PersonaSampler, PopulationSpec, craft_persona, generate_population, load_taxonomy, personas_from_texts, to_persona
from personae.population.craft import CraftedPersona, TextPersona


def _persona(seed: int = 0):
    tax = load_taxonomy()
    sampler = PersonaSampler(tax, tax.rules, seed=seed, deep_attributes=80)
    attrs = sampler.sample(0)
    attrs["personal_identity.personal_motto"] = "one day at a time"
    return tax, to_persona(attrs, tax, seed=seed, index=0, meta={"index": 0})


async def test_craft_writes_layers_and_keeps_sampled_facts():
    tax, persona = _persona()
    seen = {}

    def reply(request):
        assert request.schema_name == "CraftedPersona"
        prompt = request.messages[-1].content
        seen["prompt"] = prompt
        return json.dumps({
            "description": f"{persona.name} is a thoughtful person.",
            "speaking_style": "Speaks slowly, with dry humour.",
            "social_identity": "A proud member of the community.",
            "personal_identity": "Curious and calm.",
            "life_context": "Early riser who cooks every day.",
            "linguistic_habits": ["says 'well, well'", "  "],
            "details": [
                {"attribute": "personal_motto", "value": "slow and steady"},
                {"attribute": "demographics.age", "value": "99"},  # not a text attribute: ignored
                {"attribute": "no.such.path", "value": "x"},
            ],
        })

    llm = ScriptedLLM(reply)
    crafted = await craft_persona(persona, tax, Gateway(llm), seed=1)
    assert crafted.description == f"{persona.name} is a thoughtful person."
    assert crafted.speaking_style == "Speaks slowly, with dry humour."
    assert (crafted.social_identity, crafted.personal_identity, crafted.life_context) == ("A proud member of the community.", "Curious and calm.", "Early riser who cooks every day.")
    assert crafted.linguistic_habits[: len(persona.linguistic_habits)] == persona.linguistic_habits
    assert "says 'well, well'" in crafted.linguistic_habits and "" not in crafted.linguistic_habits
    assert crafted.attributes["personal_identity.personal_motto"] == "slow and steady"
    assert crafted.attributes["demographics.age"] == persona.attributes["demographics.age"]
    assert (crafted.id, crafted.age, crafted.name, crafted.occupation) == (persona.id, persona.age, persona.name, persona.occupation)
    prompt = seen["prompt"]
    assert "Social identity" in prompt and "Life context" in prompt
    assert f"country: {persona.location}" in prompt  # sampled facts reach the crafter by layer
    assert "personal_identity.personal_motto" in prompt  # the free-text attribute to fill, with its hint


async def test_craft_request_is_seeded_and_cacheable():
    tax, persona = _persona()
    llm = FakeLLM(seed=3)
    gw = Gateway(llm)
    first = await craft_persona(persona, tax, gw, seed=7)
    second = await craft_persona(persona, tax, gw, seed=7)
    assert first == second
    assert llm.requests[0].seed == llm.requests[1].seed is not None
    assert llm.requests[0].schema_name == "CraftedPersona"
    CraftedPersona.model_validate_json(json.dumps({"description": "x", "speaking_style": "y"}))


async def test_personas_from_texts(fake_gateway):
    texts = [
        "Five easy weeknight curries for busy parents, each under 30 minutes.",
        "Changelog v2.3: fixed race condition in the async connection pool; dropped Python 3.8.",
        "Our allotment society meets on Saturday to plan the spring planting rota.",
    ]
    people = await personas_from_texts(texts, fake_gateway, seed=1)
    again = await personas_from_texts(texts, fake_gateway, seed=1)
    assert [p.model_dump() for p in people] == [p.model_dump() for p in again]
    assert len(people) == 3 and len({p.id for p in people}) == 3
    assert len({p.attributes["source.text_id"] for p in people}) == 3
    assert all(p.name and p.description for p in people)

    def reply(request):
        assert request.schema_name == "TextPersona"
        assert "allotment" in request.messages[-1].content or "curries" in request.messages[-1].content or "Changelog" in request.messages[-1].content
        return json.dumps({"name": "Priya Nair", "age": 41, "gender": "female", "occupation": "backend developer", "location": "Pune", "description": "Maintains an open-source database driver.", "values": ["craft"], "interests": ["compilers", " "]})

    [dev] = await personas_from_texts(texts[1:2], Gateway(ScriptedLLM(reply)))
    assert (dev.name, dev.age, dev.occupation, dev.location) == ("Priya Nair", 41, "backend developer", "Pune")
    assert dev.attributes["interests"] == ["compilers"]
    TextPersona.model_validate({"name": "x", "description": "y"})


async def test_generate_with_fake_model_crafts_every_persona(tmp_path, fake_gateway, hashing_embedder):
    spec = PopulationSpec(size=6, seed=2, deep_attributes=10)
    report = await generate_population(spec, gateway=fake_gateway, embedder=hashing_embedder, qdrant=None, out_dir=tmp_path)
    assert report.crafted and report.llm_validated and report.produced == 6
    assert report.usage["crafter.calls"] == 6
    assert report.usage["validator.calls"] >= 6
