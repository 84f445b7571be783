"""Crafting: the LLM turns sampled attributes into prose, layer by layer (SPeCtrum).

:func:`craft_persona` writes the description, speaking style, the three identity
layers and linguistic habits from the persona's sampled attributes (role
``crafter``), and fills free-text attributes from their generation hints.
:func:`personas_from_texts` derives personas from given texts (Persona Hub's
text-to-persona: who would read, write or need this text?).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pydantic import BaseModel, Field

from personae.ids import stable_id
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.population.mapping import META_KEY, layer_summary
from personae.population.taxonomy import LAYERS, Taxonomy
from personae.population.validate import RevisedValue, derive_seed
from personae.prompts import PromptSet, render_with

__all__ = ["CraftedPersona", "TextPersona", "craft_persona", "personas_from_texts"]

log = logging.getLogger(__name__)


class CraftedPersona(BaseModel):
    """What the crafter writes for a sampled persona."""

    description: str = Field(min_length=1, max_length=4000)
    speaking_style: str = Field(min_length=1, max_length=1000)
    social_identity: str = Field("", max_length=2000)
    personal_identity: str = Field("", max_length=2000)
    life_context: str = Field("", max_length=2000)
    linguistic_habits: list[str] = Field(default_factory=list, max_length=10)
    details: list[RevisedValue] = Field(default_factory=list, max_length=50)


class TextPersona(BaseModel):
    """A persona inferred from a text (text-to-persona)."""

    name: str = Field(min_length=1, max_length=200)
    age: int | None = Field(None, ge=0, le=120)
    gender: str | None = Field(None, max_length=100)
    occupation: str | None = Field(None, max_length=200)
    location: str | None = Field(None, max_length=200)
    description: str = Field(min_length=1, max_length=4000)
    speaking_style: str | None = Field(None, max_length=1000)
    social_identity: str | None = Field(None, max_length=2000)
    personal_identity: str | None = Field(None, max_length=2000)
    life_context: str | None = Field(None, max_length=2000)
    values: list[str] = Field(default_factory=list, max_length=10)
    interests: list[str] = Field(default_factory=list, max_length=10)


def _pending_text(persona: Persona, taxonomy: Taxonomy) -> list[tuple[str, str]]:
    """Free-text leaves the persona should describe: those already sampled (refined) keep theirs."""
    out = []
    for path, value in persona.attributes.items():
        leaf = taxonomy.by_path.get(path)
        if leaf is not None and leaf.type == "text" and leaf.hint:
            out.append((path, leaf.hint))
    return out


async def craft_persona(persona: Persona, taxonomy: Taxonomy, gateway: Gateway, *, seed: int, prompts: PromptSet | None = None, role: str = "crafter") -> Persona:
    """``persona`` with description, speaking style, layers and habits written by the model.

    Sampled facts (attributes, core fields) are kept as they are; free-text
    attributes with a generation hint are rewritten in the persona's voice.
    """
    attrs = {p: v for p, v in persona.attributes.items() if p != META_KEY}
    layers = {layer: layer_summary(attrs, taxonomy, layer) or "(none)" for layer in LAYERS}
    text_attributes = _pending_text(persona, taxonomy)
    prompt = render_with(prompts, "population_craft", {"name": persona.name, "text_attributes": text_attributes, **layers})
    crafted = await gateway.structured([{"role": "user", "content": prompt}], CraftedPersona, role=role, seed=derive_seed(seed, persona.id, "craft"), max_tokens=1024)
    attributes = dict(persona.attributes)
    allowed = {p for p, _ in text_attributes}
    for item in crafted.details:
        try:
            path = taxonomy.resolve(item.attribute.strip())
        except KeyError:
            continue
        if path in allowed:
            attributes[path] = item.value.strip()
    habits = list(dict.fromkeys([*persona.linguistic_habits, *(h.strip() for h in crafted.linguistic_habits if h.strip())]))
    return persona.model_copy(
        update={
            "description": crafted.description.strip(),
            "speaking_style": crafted.speaking_style.strip(),
            "social_identity": crafted.social_identity.strip() or persona.social_identity,
            "personal_identity": crafted.personal_identity.strip() or persona.personal_identity,
            "life_context": crafted.life_context.strip() or persona.life_context,
            "linguistic_habits": habits,
            "attributes": attributes,
        }
    )


async def personas_from_texts(
    texts: Sequence[str],
    gateway: Gateway,
    *,
    seed: int = 0,
    prompts: PromptSet | None = None,
    role: str = "crafter",
    max_chars: int = 4000,
) -> list[Persona]:
    """One persona per text: who would read, write or need it (Persona Hub's text-to-persona).

    Calls run concurrently (the gateway limits them). Each persona records the id of
    its source text in ``attributes["source.text_id"]``; ids are stable.
    """

    async def one(i: int, text: str) -> Persona:
        clipped = text[:max_chars]
        prompt = render_with(prompts, "population_from_text", {"text": clipped})
        got = await gateway.structured([{"role": "user", "content": prompt}], TextPersona, role=role, seed=derive_seed(seed, i, clipped, "text-to-persona"), max_tokens=1024)
        text_id = stable_id("text", clipped)
        return Persona(
            id=stable_id("persona", "text", seed, text_id),
            name=got.name.strip() or f"Reader {i}",
            age=got.age,
            gender=got.gender,
            location=got.location,
            occupation=got.occupation,
            values=[v.strip() for v in got.values if v.strip()],
            speaking_style=got.speaking_style,
            social_identity=got.social_identity,
            personal_identity=got.personal_identity,
            life_context=got.life_context,
            description=got.description.strip(),
            attributes={"source.text_id": text_id, "interests": [v.strip() for v in got.interests if v.strip()]},
        )

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))
