"""Sampled attributes → :class:`~personae.models.Persona` (core fields, SPeCtrum layers, attributes).

The taxonomy's ``persona_fields`` say which attribute paths fill the typed core
fields. Each SPeCtrum layer gets a plain "label: value" summary of the attributes
in that layer; the description comes from the ``population_describe`` template.
Crafting (an LLM) may later rewrite description, speaking style and layers.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from personae.ids import content_hash, stable_id
from personae.models import BigFive, Persona
from personae.population.taxonomy import LAYERS, Taxonomy
from personae.prompts import PromptSet, render_many_with, render_with

__all__ = ["to_persona", "to_personas", "persona_json", "format_value", "layer_summary", "META_KEY", "persona_meta"]

META_KEY = "_population"
"""Key in ``Persona.attributes`` holding generation metadata (index, cell, attempt, revisions)."""

_STYLE_GROUP = "communication"
_INTEREST_GROUP = "interests"
_STRONG_INTEREST = {"keen", "passionate"}
_DETAILS = 8
_GROUP = 64  # personas mapped together by to_personas
_BIG_FIVE = dict.fromkeys(BigFive.model_fields)


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


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _traits(big_five: BigFive | None) -> list[str]:
    if big_five is None:
        return []
    out = []
    for trait, score in big_five.__dict__.items():
        if score >= 0.65:
            out.append(f"high {trait}")
        elif score <= 0.35:
            out.append(f"low {trait}")
    return out or ["balanced temperament"]


class _Layout:
    """What the mapping needs of a taxonomy, looked up once: per path ``(prefix, layer, style,
    interest, detail, label)`` (layer an index into LAYERS, ``None`` for name paths) and the
    paths behind each core field."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        fields = taxonomy.persona_fields
        mapped = {p for key, paths in fields.items() if key != "big_five" for p in paths} | set(fields.get("big_five", {}).values())
        self.name = tuple(fields.get("name", []))
        self.big_five = dict(fields["big_five"]) if "big_five" in fields else None
        self.first = {key: tuple(fields.get(key, [])) for key in ("age", "gender", "location", "occupation", "education", "values", "beliefs", "goals", "linguistic_habits")}
        self.paths: dict[str, tuple[str, int | None, bool, bool, bool, str]] = {}
        for leaf in taxonomy.leaves:
            interest = leaf.group.startswith(_INTEREST_GROUP + ".") or leaf.group == _INTEREST_GROUP
            self.paths[leaf.path] = (
                f"{leaf.label}: ",
                None if leaf.path in self.name else LAYERS.index(leaf.layer),
                leaf.group == _STYLE_GROUP and leaf.type != "multi",
                interest,
                leaf.path not in mapped and leaf.tier == "deep" and not interest,
                leaf.label,
            )


@functools.lru_cache(maxsize=8)
def _layout(taxonomy: Taxonomy) -> _Layout:
    return _Layout(taxonomy)


def _plain_number(value: Any) -> bool:
    """Whether ``value`` (not a string) serialises to the same canonical JSON with orjson as with :mod:`json`."""
    t = type(value)
    if t is int:
        return -(2**63) <= value < 2**64
    if t is float:
        return value == 0.0 or (1e-4 <= abs(value) < math.inf)
    if t is list:
        return all(type(v) is str for v in value)
    return value is None or t is bool


def _get_first(attrs: Mapping[str, Any], paths: tuple[str, ...]) -> Any:
    for path in paths:
        value = attrs.get(path)
        if value is not None:
            return value
    return None


def _fields(attrs: Mapping[str, Any], taxonomy: Taxonomy, index: int) -> tuple[dict[str, Any], dict[str, Any], bool]:
    """The template values, the Persona fields (all but id, attributes and description) and whether
    every attribute value is plain (strings, lists of strings, ordinary numbers: see :func:`_plain_number`)."""
    layout = _layout(taxonomy)
    paths = layout.paths
    name = " ".join(str(attrs[p]) for p in layout.name if attrs.get(p)) or f"Person {index}"
    first = layout.first
    age = _get_first(attrs, first["age"])
    big_five = None
    if layout.big_five is not None:
        scores = {trait: attrs.get(path) for trait, path in layout.big_five.items()}
        if scores and all(isinstance(v, (int, float)) for v in scores.values()):
            clamped = {k: min(1.0, max(0.0, float(v))) for k, v in scores.items()}
            # all five traits: built in field order, unchecked (clamped above); otherwise validated as before
            big_five = _trusted(BigFive, {k: clamped[k] for k in _BIG_FIVE}) if clamped.keys() == _BIG_FIVE.keys() else BigFive(**clamped)
    layers: list[list[str]] = [[] for _ in LAYERS]
    style: list[str] = []
    interests: list[str] = []
    details: list[tuple[str, str]] = []
    plain = True
    for path, value in attrs.items():
        pi = paths.get(path)
        if type(value) is str:
            if pi is None:
                continue
            text = value
        else:
            if plain and not _plain_number(value):
                plain = False
            if pi is None:
                continue
            text = format_value(value)
        prefix, layer, is_style, interest, detail, label = pi
        if layer is not None:
            layers[layer].append(prefix + text)
        if is_style:
            style.append(prefix + text)
        if interest:
            if value in _STRONG_INTEREST:
                interests.append(label)
        elif detail and len(details) < _DETAILS:
            details.append((label, text))
    gender, location = _get_first(attrs, first["gender"]), _get_first(attrs, first["location"])
    occupation, education = _get_first(attrs, first["occupation"]), _get_first(attrs, first["education"])
    values = {
        "name": name,
        "age": age,
        "gender": gender,
        "location": location,
        "settlement": attrs.get("demographics.settlement"),
        "occupation": occupation,
        "education": education,
        "traits": _traits(big_five),
        "values": _as_list(_get_first(attrs, first["values"])),
        "beliefs": _as_list(_get_first(attrs, first["beliefs"])),
        "goals": _as_list(_get_first(attrs, first["goals"])),
        "interests": interests,
        "details": details,
    }
    persona = {  # in the order of Persona's fields (serialisation follows it)
        "name": name[:200],
        "age": int(age) if isinstance(age, (int, float)) and 0 <= age <= 120 else None,
        "gender": _str(gender),
        "location": _str(location),
        "occupation": _str(occupation),
        "education": _str(education),
        "big_five": big_five,
        "values": values["values"],
        "beliefs": values["beliefs"],
        "speaking_style": "; ".join(style) or None,
        "linguistic_habits": _as_list(_get_first(attrs, first["linguistic_habits"])),
        "goals": values["goals"],
        "social_identity": "; ".join(layers[0]) or None,
        "personal_identity": "; ".join(layers[1]) or None,
        "life_context": "; ".join(layers[2]) or None,
    }
    return values, persona, plain


def _with_meta(attrs: Mapping[str, Any], meta: Mapping[str, Any] | None) -> dict[str, Any]:
    attributes = dict(attrs)
    if meta is not None:
        attributes[META_KEY] = dict(meta)
    return attributes


def to_persona(attrs: Mapping[str, Any], taxonomy: Taxonomy, *, seed: int, index: int, meta: Mapping[str, Any] | None = None, prompts: PromptSet | None = None) -> Persona:
    """Build the persona for sampled ``attrs`` (taxonomy path → value).

    The id is stable: derived from ``seed``, ``index`` and the attributes.
    """
    values, fields, _ = _fields(attrs, taxonomy, index)
    if fields["big_five"] is not None:  # validated here: the batch path builds it unchecked
        fields["big_five"] = BigFive(**fields["big_five"].model_dump())
    description = " ".join(render_with(prompts, "population_describe", values).split())
    return Persona(
        id=stable_id("persona", seed, index, content_hash(attrs, length=16)),
        **fields,
        attributes=_with_meta(attrs, meta),
        description=description,
    )


def to_personas(
    attrs: Sequence[Mapping[str, Any]],
    taxonomy: Taxonomy,
    *,
    seed: int,
    indices: Sequence[int],
    metas: Sequence[Mapping[str, Any] | None],
    prompts: PromptSet | None = None,
) -> list[Persona]:
    """:func:`to_persona` for many personas at once, with the same results.

    Faster: descriptions are rendered in one template pass, ids hashed with orjson where it
    gives the same canonical JSON as :func:`~personae.ids.canonical_json` (plain values), and
    each :class:`~personae.models.Persona` is built without validation, which every field
    passes by construction (name cut to 1–200 characters, age in 0–120 or ``None``, Big Five
    clamped to 0–1, strings and lists of strings elsewhere).
    """
    if not (len(attrs) == len(indices) == len(metas)):
        raise ValueError("attrs, indices and metas differ in length")
    out: list[Persona] = []
    # in groups: a group's template values die young, before the garbage collector promotes them
    for start in range(0, len(attrs), _GROUP):
        group = slice(start, start + _GROUP)
        built = [_fields(a, taxonomy, i) for a, i in zip(attrs[group], indices[group])]
        descriptions = render_many_with(prompts, "population_describe", [b[0] for b in built])
        for a, index, meta, (_, fields, plain), text in zip(attrs[group], indices[group], metas[group], built, descriptions):
            digest = _fast_hash(a) if plain else None
            fields = {"id": stable_id("persona", seed, index, digest or content_hash(a, length=16)), **fields}
            fields["attributes"] = _with_meta(a, meta)
            fields["description"] = " ".join(text.split())
            out.append(_trusted(Persona, fields))
    return out


_PERSONA_FIELDS = tuple(Persona.model_fields)
_JSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def persona_json(persona: Persona) -> str:
    """``persona.model_dump_json()``, by orjson where the attributes hold only JSON types
    (strings, numbers, booleans, null, lists and string-keyed objects of them), which it
    writes the same way; anything else goes through pydantic."""
    data = persona.__dict__
    fields = {k: data[k] for k in _PERSONA_FIELDS}
    if fields["big_five"] is not None:
        fields["big_five"] = fields["big_five"].__dict__
    try:
        return orjson.dumps(fields, option=_JSON_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return persona.model_dump_json()


_M = TypeVar("_M", bound=BaseModel)


def _trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """An instance of ``cls`` from values that already satisfy it, every field given: what
    ``cls.model_construct(**values)`` makes, without its per-field alias and default lookups
    (for models without extra fields, private attributes or post-init hooks)."""
    obj = cls.__new__(cls)
    object.__setattr__(obj, "__dict__", values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    object.__setattr__(obj, "__pydantic_extra__", None)
    object.__setattr__(obj, "__pydantic_private__", None)
    return obj


def _fast_hash(attrs: Mapping[str, Any]) -> str | None:
    """:func:`~personae.ids.content_hash` (16 characters) of plain attributes via orjson (``None``: it cannot)."""
    try:
        encoded = orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return hashlib.sha256(encoded).hexdigest()[:16]


def _str(value: Any) -> str | None:
    return None if value is None else format_value(value)
