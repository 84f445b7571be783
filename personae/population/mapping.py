"""Sampled attributes → :class:`~personae.models.Persona` (core fields, SPeCtrum layers, attributes).

The taxonomy's ``persona_fields`` say which attribute paths fill the typed core
fields. Each SPeCtrum layer gets a plain "label: value" summary of the attributes
in that layer; the description comes from the ``population_describe`` template.
Crafting (an LLM) may later rewrite description, speaking style and layers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from personae.ids import content_hash, stable_id
from personae.models import BigFive, Persona
from personae.population.taxonomy import LAYERS, Taxonomy
from personae.prompts import PromptSet, render_with

__all__ = ["to_persona", "format_value", "layer_summary", "META_KEY", "persona_meta"]

META_KEY = "_population"
"""Key in ``Persona.attributes`` holding generation metadata (index, cell, attempt, revisions)."""

_STYLE_GROUP = "communication"
_INTEREST_GROUP = "interests"
_STRONG_INTEREST = {"keen", "passionate"}
_DETAILS = 8


def format_value(value: Any) -> str:
    """An attribute value as text (lists joined with commas)."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def layer_summary(attrs: Mapping[str, Any], taxonomy: Taxonomy, layer: str, *, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """``"label: value; ..."`` for the attributes of one SPeCtrum layer."""
    parts = []
    for path, value in attrs.items():
        leaf = taxonomy.by_path.get(path)
        if leaf is None or leaf.layer != layer or path in skip:
            continue
        parts.append(f"{leaf.label}: {format_value(value)}")
    return "; ".join(parts)


def persona_meta(persona: Persona) -> dict[str, Any]:
    """The generation metadata of a generated persona (empty for others)."""
    meta = persona.attributes.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def _first(attrs: Mapping[str, Any], fields: Mapping[str, Any], name: str) -> Any:
    for path in fields.get(name, []):
        if attrs.get(path) is not None:
            return attrs[path]
    return None


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _traits(big_five: BigFive | None) -> list[str]:
    if big_five is None:
        return []
    out = []
    for trait, score in big_five.model_dump().items():
        if score >= 0.65:
            out.append(f"high {trait}")
        elif score <= 0.35:
            out.append(f"low {trait}")
    return out or ["balanced temperament"]


class _PathInfo:
    __slots__ = ("label", "layer", "style", "interest", "detail")

    def __init__(self, label: str, layer: str, style: bool, interest: bool, detail: bool) -> None:
        self.label = label
        self.layer = layer
        self.style = style
        self.interest = interest
        self.detail = detail


@functools.lru_cache(maxsize=8)
def _path_info(taxonomy: Taxonomy) -> dict[str, _PathInfo]:
    fields = taxonomy.persona_fields
    mapped = {p for key, paths in fields.items() if key != "big_five" for p in paths} | set(fields.get("big_five", {}).values())
    info = {}
    for leaf in taxonomy.leaves:
        interest = leaf.group.startswith(_INTEREST_GROUP + ".") or leaf.group == _INTEREST_GROUP
        info[leaf.path] = _PathInfo(
            label=leaf.label,
            layer=leaf.layer,
            style=leaf.group == _STYLE_GROUP and leaf.type != "multi",
            interest=interest,
            detail=leaf.path not in mapped and leaf.tier == "deep" and not interest,
        )
    return info


def to_persona(attrs: Mapping[str, Any], taxonomy: Taxonomy, *, seed: int, index: int, meta: Mapping[str, Any] | None = None, prompts: PromptSet | None = None) -> Persona:
    """Build the persona for sampled ``attrs`` (taxonomy path → value).

    The id is stable: derived from ``seed``, ``index`` and the attributes.
    """
    fields = taxonomy.persona_fields
    info = _path_info(taxonomy)
    name_paths = set(fields.get("name", []))
    name = " ".join(str(attrs[p]) for p in fields.get("name", []) if attrs.get(p)) or f"Person {index}"
    age = _first(attrs, fields, "age")
    big_five = None
    if "big_five" in fields:
        scores = {trait: attrs.get(path) for trait, path in fields["big_five"].items()}
        if scores and all(isinstance(v, (int, float)) for v in scores.values()):
            big_five = BigFive(**{k: min(1.0, max(0.0, float(v))) for k, v in scores.items()})
    layers: dict[str, list[str]] = {layer: [] for layer in LAYERS}
    style: list[str] = []
    interests: list[str] = []
    details: list[tuple[str, str]] = []
    for path, value in attrs.items():
        pi = info.get(path)
        if pi is None:
            continue
        text = value if type(value) is str else format_value(value)
        if path not in name_paths:
            layers[pi.layer].append(f"{pi.label}: {text}")
        if pi.style:
            style.append(f"{pi.label}: {text}")
        if pi.interest and value in _STRONG_INTEREST:
            interests.append(pi.label)
        elif pi.detail and len(details) < _DETAILS:
            details.append((pi.label, text))
    values = {
        "name": name,
        "age": age,
        "gender": _first(attrs, fields, "gender"),
        "location": _first(attrs, fields, "location"),
        "settlement": attrs.get("demographics.settlement"),
        "occupation": _first(attrs, fields, "occupation"),
        "education": _first(attrs, fields, "education"),
        "traits": _traits(big_five),
        "values": _as_list(_first(attrs, fields, "values")),
        "beliefs": _as_list(_first(attrs, fields, "beliefs")),
        "goals": _as_list(_first(attrs, fields, "goals")),
        "interests": interests,
        "details": details,
    }
    description = " ".join(render_with(prompts, "population_describe", values).split())
    attributes = dict(attrs)
    if meta is not None:
        attributes[META_KEY] = dict(meta)
    return Persona(
        id=stable_id("persona", seed, index, content_hash(attrs, length=16)),
        name=name[:200],
        age=int(age) if isinstance(age, (int, float)) and 0 <= age <= 120 else None,
        gender=_str(values["gender"]),
        location=_str(values["location"]),
        occupation=_str(values["occupation"]),
        education=_str(values["education"]),
        big_five=big_five,
        values=values["values"],
        beliefs=values["beliefs"],
        speaking_style="; ".join(style) or None,
        linguistic_habits=_as_list(_first(attrs, fields, "linguistic_habits")),
        goals=values["goals"],
        social_identity="; ".join(layers[LAYERS[0]]) or None,
        personal_identity="; ".join(layers[LAYERS[1]]) or None,
        life_context="; ".join(layers[LAYERS[2]]) or None,
        attributes=attributes,
        description=description,
    )


def _str(value: Any) -> str | None:
    return None if value is None else format_value(value)
