"""The hierarchical attribute taxonomy: file format, loading, merging and compiling.

A taxonomy file (YAML or JSON) has ``attributes``: a tree of groups whose leaves are
attributes. A leaf is either a full mapping with a ``type`` key, a list (categorical,
uniform), or ``"@name"`` (categorical over a named value set). Groups may carry
``doc``, ``layer`` (SPeCtrum layer), ``tier`` (``core``: sampled for every persona;
``deep``: picked progressively) and ``related`` (groups considered *near*).

User files extend the packaged taxonomy by default (``extends: default``): groups merge
by path, a leaf at the same path replaces the packaged one, ``remove`` deletes paths,
rules are appended. ``extends: none`` replaces the packaged taxonomy entirely.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from personae.errors import ConfigError
from personae.ids import content_hash
from personae.population.conditions import Condition, Predicate, Rule, parse_condition, parse_rule
from personae.validation import describe_validation_error, load_data_file

__all__ = [
    "LeafSpec",
    "WhenClause",
    "Leaf",
    "Taxonomy",
    "load_taxonomy",
    "default_taxonomy_path",
    "LAYERS",
]

log = logging.getLogger(__name__)

LAYERS = ("social_identity", "personal_identity", "life_context")
Layer = Literal["social_identity", "personal_identity", "life_context"]
LeafType = Literal["categorical", "multi", "int", "float", "text"]
_GROUP_META = {"doc", "layer", "tier", "related"}
_PERSONA_FIELDS = {"name", "age", "gender", "location", "occupation", "education", "values", "beliefs", "linguistic_habits", "goals", "big_five"}
_DEFAULT_EXCLUSIVE = {"none", "nothing", "none in particular"}
_BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


def default_taxonomy_path() -> Path:
    """The packaged taxonomy file."""
    return Path(__file__).resolve().parent.parent / "data" / "taxonomy.yaml"


# ---- file-level models ------------------------------------------------------------

Values = list[Any] | dict[str, float] | str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FollowSpec(_Strict):
    """Correlate an ordinal leaf with another attribute (numeric 0..1 or ordinal categorical)."""

    attribute: str
    direction: Literal[1, -1] = 1
    spread: float = Field(0.25, gt=0.0, le=5.0)


class WhenClause(_Strict):
    """A conditional adjustment: when ``if`` holds, restrict/re-weight values or change the range."""

    if_: str | dict[str, Any] = Field(alias="if")
    values: Values | None = None
    weights: dict[str, float] | None = None
    exclude: list[Any] | None = None
    range: tuple[float, float] | None = None
    mean: float | None = None
    sd: float | None = Field(None, gt=0)

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(w < 0 for w in value.values()):
            raise ValueError("weights must be >= 0")
        return value


class LeafSpec(_Strict):
    """One attribute as written in a taxonomy file."""

    type: LeafType
    values: Values | None = None
    range: tuple[float, float] | None = None
    dist: Literal["uniform", "normal"] = "uniform"
    mean: float | None = None
    sd: float | None = Field(None, gt=0)
    decimals: int = Field(2, ge=0, le=6)
    pick: tuple[int, int] = (1, 3)
    exclusive: list[Any] | None = None
    scale: list[Any] | None = None
    hint: str | None = None
    examples: list[str] = Field(default_factory=list)
    when: list[WhenClause] = Field(default_factory=list)
    applies_if: str | dict[str, Any] | None = None
    follows: FollowSpec | str | None = None
    tier: Literal["core", "deep"] | None = None
    layer: Layer | None = None
    label: str | None = None
    weight: float = Field(1.0, ge=0.0)
    doc: str | None = None

    @model_validator(mode="after")
    def _check(self) -> LeafSpec:
        if self.type in ("categorical", "multi") and self.values is None:
            raise ValueError(f"a {self.type} attribute needs 'values'")
        if self.type in ("int", "float") and self.range is None:
            raise ValueError(f"a {self.type} attribute needs 'range: [low, high]'")
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range low {self.range[0]} exceeds high {self.range[1]}")
        if self.pick[0] < 0 or self.pick[0] > self.pick[1]:
            raise ValueError(f"pick must be [min, max] with 0 <= min <= max, got {list(self.pick)}")
        if self.type == "text" and not self.hint and not self.examples:
            raise ValueError("a text attribute needs a generation 'hint' or 'examples'")
        return self


class TaxonomyFile(_Strict):
    """Top level of a taxonomy file."""

    version: int = 1
    extends: Literal["default", "none"] = "default"
    value_sets: dict[str, Values] = Field(default_factory=dict)
    persona_fields: dict[str, Any] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(default_factory=dict)
    rules: list[str | dict[str, Any]] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


# ---- parsed tree ---------------------------------------------------------------


@dataclass
class _LeafNode:
    spec: LeafSpec
    origin: str
    field: str


@dataclass
class _GroupNode:
    meta: dict[str, Any] = field(default_factory=dict)
    children: dict[str, _LeafNode | _GroupNode] = field(default_factory=dict)
    origin: str = ""


def _field_error(exc: ValidationError, *, file: str, prefix: str, what: str) -> ConfigError:
    inner, expected, got = describe_validation_error(exc)
    inner = inner.replace("if_", "if")
    return ConfigError(f"invalid {what}", file=file, field=f"{prefix}.{inner}" if inner != "<root>" else prefix, expected=expected, got=got)


def _parse_tree(raw: Mapping[str, Any], *, file: str, prefix: str) -> _GroupNode:
    group = _GroupNode(origin=file)
    for key, value in raw.items():
        key = str(key)
        here = f"{prefix}.{key}"
        if key in _GROUP_META:
            group.meta[key] = value
            continue
        if "." in key or not key.strip():
            raise ConfigError("attribute and group names may not contain '.' or be empty", file=file, field=here, got=key)
        if isinstance(value, list) or (isinstance(value, str) and value.startswith("@")):
            value = {"type": "categorical", "values": value}
        if isinstance(value, Mapping) and "type" in value:
            try:
                spec = LeafSpec.model_validate(dict(value))
            except ValidationError as exc:
                raise _field_error(exc, file=file, prefix=here, what="attribute") from None
            group.children[key] = _LeafNode(spec, file, here)
        elif isinstance(value, Mapping):
            group.children[key] = _parse_tree(value, file=file, prefix=here)
        else:
            raise ConfigError("expected a group (mapping), an attribute (mapping with 'type'), a list of values or '@value_set'", file=file, field=here, got=value)
    _check_meta(group.meta, file=file, prefix=prefix)
    return group


def _check_meta(meta: dict[str, Any], *, file: str, prefix: str) -> None:
    if "layer" in meta and meta["layer"] not in LAYERS:
        raise ConfigError("unknown SPeCtrum layer", file=file, field=f"{prefix}.layer", expected=f"one of {list(LAYERS)}", got=meta["layer"])
    if "tier" in meta and meta["tier"] not in ("core", "deep"):
        raise ConfigError("unknown tier", file=file, field=f"{prefix}.tier", expected="core or deep", got=meta["tier"])
    if "related" in meta and not (isinstance(meta["related"], list) and all(isinstance(r, str) for r in meta["related"])):
        raise ConfigError("'related' must be a list of group paths", file=file, field=f"{prefix}.related", got=meta["related"])


def _merge(base: _GroupNode, top: _GroupNode) -> None:
    base.meta.update(top.meta)
    for key, child in top.children.items():
        mine = base.children.get(key)
        if isinstance(mine, _GroupNode) and isinstance(child, _GroupNode):
            _merge(mine, child)
        else:
            base.children[key] = child


def _remove(root: _GroupNode, path: str, *, file: str, field: str) -> None:
    parts = path.split(".")
    node: _GroupNode | _LeafNode = root
    for part in parts[:-1]:
        if not isinstance(node, _GroupNode) or part not in node.children:
            raise ConfigError("cannot remove: no such attribute or group", file=file, field=field, got=path)
        node = node.children[part]
    if not isinstance(node, _GroupNode) or parts[-1] not in node.children:
        raise ConfigError("cannot remove: no such attribute or group", file=file, field=field, got=path)
    del node.children[parts[-1]]


# ---- compiled taxonomy ---------------------------------------------------------


@dataclass
class CompiledWhen:
    """A compiled conditional clause."""

    cond: Condition
    values: tuple[str, ...] | None = None
    set_weights: dict[str, float] | None = None
    weights: dict[str, float] | None = None
    exclude: frozenset[str] = frozenset()
    range: tuple[float, float] | None = None
    mean: float | None = None
    sd: float | None = None


@dataclass
class Leaf:
    """A compiled attribute."""

    path: str
    name: str
    group: str
    type: str
    tier: str
    layer: str
    label: str
    values: tuple[str, ...] = ()
    weights: tuple[float, ...] = ()
    range: tuple[float, float] | None = None
    dist: str = "uniform"
    mean: float | None = None
    sd: float | None = None
    decimals: int = 2
    pick: tuple[int, int] = (1, 3)
    exclusive: frozenset[str] = frozenset()
    scale: tuple[str, ...] = ()
    hint: str | None = None
    examples: tuple[str, ...] = ()
    when: list[CompiledWhen] = field(default_factory=list)
    applies_if: Condition | None = None
    follows: tuple[str, int, float] | None = None
    weight: float = 1.0
    origin: str = ""
    field: str = ""

    @property
    def domain(self) -> frozenset[str]:
        """Every value the attribute can take (categorical/multi)."""
        out = set(self.values)
        for clause in self.when:
            out.update(clause.values or ())
        return frozenset(out)

    @property
    def deps(self) -> frozenset[str]:
        """Attributes its distribution depends on."""
        out: set[str] = set()
        for clause in self.when:
            out |= clause.cond.paths
        if self.applies_if is not None:
            out |= self.applies_if.paths
        if self.follows is not None:
            out.add(self.follows[0])
        out.discard(self.path)
        return frozenset(out)

    @property
    def is_numeric(self) -> bool:
        return self.type in ("int", "float")


class Taxonomy:
    """A compiled taxonomy: leaves in declaration order, name resolution, rules and field mapping."""

    def __init__(self, leaves: list[Leaf], rules: list[Rule], persona_fields: dict[str, Any], groups: dict[str, dict[str, Any]], files: list[str], fingerprint: str) -> None:
        self.leaves = leaves
        self.by_path = {leaf.path: leaf for leaf in leaves}
        self.rules = rules
        self.persona_fields = persona_fields
        self.groups = groups
        self.files = files
        self.fingerprint = fingerprint
        self._by_name: dict[str, list[str]] = {}
        for leaf in leaves:
            parts = leaf.path.split(".")
            for i in range(len(parts)):
                self._by_name.setdefault(".".join(parts[i:]), []).append(leaf.path)

    def __len__(self) -> int:
        return len(self.leaves)

    def resolve(self, name: str) -> str:
        """A full path for ``name`` (a full path or a unique trailing part); ``KeyError`` otherwise."""
        if name in self.by_path:
            return name
        found = self._by_name.get(name, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise KeyError(f"ambiguous attribute {name!r}: matches {sorted(found)}; write the full path")
        close = difflib.get_close_matches(name, list(self._by_name), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown attribute {name!r}{hint}")

    def leaf(self, name: str) -> Leaf:
        """The leaf called ``name`` (path or unique name)."""
        return self.by_path[self.resolve(name)]

    @property
    def core(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.tier == "core"]

    @property
    def deep(self) -> list[Leaf]:
        return [leaf for leaf in self.leaves if leaf.tier == "deep"]

    def compile_rules(self, raw_rules: list[str | dict[str, Any]], *, file: str | None, field: str = "rules") -> list[Rule]:
        """Parse and check user rules against this taxonomy."""
        return [self.compile_rule(raw, file=file, field=f"{field}[{i}]") for i, raw in enumerate(raw_rules)]

    def compile_rule(self, raw: str | dict[str, Any], *, file: str | None, field: str) -> Rule:
        """Parse and check one rule against this taxonomy."""
        return _coerce_rule(parse_rule(raw, self.resolve, file=file, field=field), self, file=file, field=field)

    def compile_condition(self, raw: str | dict[str, Any], *, file: str | None, field: str) -> Condition:
        """Parse and check a condition against this taxonomy."""
        return _coerce_condition(parse_condition(raw, self.resolve, file=file, field=field), self, file=file, field=field)


# ---- value checking --------------------------------------------------------------


def _coerce_predicate(pred: Predicate, tax: Taxonomy, *, file: str | None, field: str) -> Predicate:
    leaf = tax.by_path[pred.path]
    if pred.ref is not None:
        other = tax.by_path[pred.ref]
        if not (leaf.is_numeric and other.is_numeric):
            raise ConfigError("comparing with another attribute needs two numeric attributes", file=file, field=field, got=f"{pred.path} {pred.op} {pred.ref}")
        return pred
    if leaf.is_numeric:
        if pred.op in ("contains",):
            raise ConfigError(f"'contains' does not apply to numeric attribute {leaf.path}", file=file, field=field)
        values = pred.value if isinstance(pred.value, tuple) else (pred.value,)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{leaf.path} is numeric; compare it with numbers", file=file, field=field, got=pred.value)
        return pred
    if leaf.type == "text":
        raise ConfigError(f"{leaf.path} is free text and cannot appear in conditions", file=file, field=field)
    if pred.op in ("<", "<=", ">", ">="):
        raise ConfigError(f"'{pred.op}' needs a numeric attribute; {leaf.path} is {leaf.type}", file=file, field=field)
    values = pred.value if isinstance(pred.value, tuple) else (pred.value,)
    texts = tuple(_text(v) for v in values)
    domain = leaf.domain
    bad = [v for v in texts if v not in domain]
    if bad and file == str(default_taxonomy_path()) and leaf.origin != file:
        # a user file replaced this attribute with other values: packaged conditions on the
        # old values simply never match (the user's own files stay strictly checked)
        log.info("%s: value %r of %s no longer exists (replaced in %s); condition kept, never true", field, bad[0], leaf.path, leaf.origin)
        bad = []
    if bad:
        close = difflib.get_close_matches(bad[0], sorted(domain), n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown value {bad[0]!r} for {leaf.path}{hint}", file=file, field=field, expected=f"one of {sorted(domain)[:30]}", got=bad[0])
    return Predicate(pred.path, pred.op, texts if isinstance(pred.value, tuple) else texts[0])


def _coerce_condition(cond: Condition, tax: Taxonomy, *, file: str | None, field: str) -> Condition:
    return Condition(tuple(_coerce_predicate(p, tax, file=file, field=field) for p in cond.predicates), text=cond.text)


def _coerce_rule(rule: Rule, tax: Taxonomy, *, file: str | None, field: str) -> Rule:
    when = None if rule.when is None else _coerce_condition(rule.when, tax, file=file, field=field)
    then = _coerce_condition(rule.then, tax, file=file, field=field)
    return Rule(name=rule.name, then=then, when=when, source=rule.source)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---- loading ------------------------------------------------------------------------


@dataclass
class _Source:
    file: str
    model: TaxonomyFile
    tree: _GroupNode


def _read(path: Path) -> _Source:
    data = load_data_file(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level of the taxonomy file", file=str(path), expected="mapping with 'attributes'", got=type(data).__name__)
    try:
        model = TaxonomyFile.model_validate(data)
    except ValidationError as exc:
        raise _top_error(exc, str(path)) from None
    tree = _parse_tree(model.attributes, file=str(path), prefix="attributes")
    return _Source(str(path), model, tree)


def _top_error(exc: ValidationError, file: str) -> ConfigError:
    field_, expected, got = describe_validation_error(exc)
    return ConfigError("invalid taxonomy", file=file, field=field_, expected=expected, got=got)


def load_taxonomy(path: str | os.PathLike | None = None) -> Taxonomy:
    """Load the packaged taxonomy, or ``path`` (extending or replacing the packaged one).

    Raises :class:`ConfigError` naming the file and the field path of any problem.
    The compiled result is cached per file state (path, size, mtime); treat it as
    read-only.
    """
    files = [default_taxonomy_path()] + ([Path(path)] if path is not None else [])
    stamp = tuple(_stamp(f) for f in files)
    return _load_cached(None if path is None else str(Path(path)), stamp)


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str | None, stamp: tuple) -> Taxonomy:
    del stamp  # part of the cache key only
    return _load(path)


def _load(path: str | None) -> Taxonomy:
    sources: list[_Source] = []
    if path is not None:
        user = _read(Path(path))
        if user.model.extends == "default":
            sources.append(_read(default_taxonomy_path()))
        sources.append(user)
    else:
        sources.append(_read(default_taxonomy_path()))
    root = _GroupNode()
    value_sets: dict[str, tuple[Values, str]] = {}
    fields: dict[str, tuple[Any, str]] = {}
    raw_rules: list[tuple[str | dict[str, Any], str, int]] = []
    for src in sources:
        _merge(root, src.tree)
        for i, removed in enumerate(src.model.remove):
            _remove(root, removed, file=src.file, field=f"remove[{i}]")
        for name, values in src.model.value_sets.items():
            value_sets[name] = (values, src.file)
        for name, value in src.model.persona_fields.items():
            if name not in _PERSONA_FIELDS:
                raise ConfigError("unknown persona field", file=src.file, field=f"persona_fields.{name}", expected=f"one of {sorted(_PERSONA_FIELDS)}", got=name)
            fields[name] = (value, src.file)
        raw_rules += [(r, src.file, i) for i, r in enumerate(src.model.rules)]
    leaves: list[Leaf] = []
    groups: dict[str, dict[str, Any]] = {}
    _flatten(root, "", {"tier": "deep", "layer": "personal_identity"}, leaves, groups, value_sets)
    if not leaves:
        raise ConfigError("the taxonomy has no attributes", file=sources[-1].file, field="attributes", expected="at least one attribute")
    fingerprint = content_hash([src.model.model_dump(mode="json", by_alias=True) for src in sources], length=16)
    tax = Taxonomy(leaves, [], {}, groups, [s.file for s in sources], fingerprint)
    _compile_conditions(tax)
    tax.persona_fields = _compile_fields(fields, tax)
    for raw, file, i in raw_rules:
        tax.rules.append(tax.compile_rule(raw, file=file, field=f"rules[{i}]"))
    _order_core(tax)
    return tax


def _resolve_values(values: Values, value_sets: dict[str, tuple[Values, str]], *, file: str, field: str) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if isinstance(values, str):
        if not values.startswith("@"):
            raise ConfigError("values must be a list, a mapping of value → weight, or '@value_set'", file=file, field=field, got=values)
        name = values[1:]
        if name not in value_sets:
            close = difflib.get_close_matches(name, list(value_sets), n=3)
            raise ConfigError(f"unknown value set {name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""), file=file, field=field, expected=f"one of {sorted(value_sets)}", got=values)
        return _resolve_values(value_sets[name][0], value_sets, file=value_sets[name][1], field=f"value_sets.{name}")
    if isinstance(values, Mapping):
        names = tuple(_text(k) for k in values)
        weights = tuple(float(w) for w in values.values())
        if any(w < 0 for w in weights):
            raise ConfigError("weights must be >= 0", file=file, field=field, got=dict(values))
    else:
        names = tuple(_text(v) for v in values)
        weights = tuple(1.0 for _ in names)
    if not names:
        raise ConfigError("empty value list", file=file, field=field, expected="at least one value")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError("repeated values", file=file, field=field, got=dupes)
    if sum(weights) <= 0:
        raise ConfigError("weights sum to zero", file=file, field=field, expected="at least one positive weight")
    return names, weights


def _flatten(node: _GroupNode, prefix: str, inherited: dict[str, Any], leaves: list[Leaf], groups: dict[str, dict[str, Any]], value_sets: dict[str, tuple[Values, str]]) -> None:
    meta = {**inherited, **{k: v for k, v in node.meta.items() if k in ("tier", "layer")}}
    if prefix:
        groups[prefix] = {"doc": node.meta.get("doc", ""), "related": list(node.meta.get("related", [])), "layer": meta["layer"]}
    for key, child in node.children.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(child, _GroupNode):
            _flatten(child, path, meta, leaves, groups, value_sets)
            continue
        spec = child.spec
        values: tuple[str, ...] = ()
        weights: tuple[float, ...] = ()
        if spec.values is not None and spec.type in ("categorical", "multi", "text"):
            values, weights = _resolve_values(spec.values, value_sets, file=child.origin, field=f"{child.field}.values")
        leaves.append(
            Leaf(
                path=path,
                name=key,
                group=prefix,
                type=spec.type,
                tier=spec.tier or meta["tier"],
                layer=spec.layer or meta["layer"],
                label=spec.label or key.replace("_", " "),
                values=values,
                weights=weights,
                range=spec.range,
                dist=spec.dist,
                mean=spec.mean,
                sd=spec.sd,
                decimals=spec.decimals,
                pick=spec.pick,
                exclusive=frozenset(_text(v) for v in spec.exclusive) if spec.exclusive is not None else frozenset(v for v in values if v in _DEFAULT_EXCLUSIVE),
                scale=tuple(_text(v) for v in spec.scale) if spec.scale is not None else values,
                hint=spec.hint,
                examples=tuple(spec.examples) or (values if spec.type == "text" else ()),
                weight=spec.weight,
                origin=child.origin,
                field=child.field,
            )
        )
        leaves[-1]._spec = spec  # type: ignore[attr-defined]
        leaves[-1]._value_sets = value_sets  # type: ignore[attr-defined]


def _compile_conditions(tax: Taxonomy) -> None:
    for leaf in tax.leaves:
        spec: LeafSpec = leaf._spec  # type: ignore[attr-defined]
        value_sets = leaf._value_sets  # type: ignore[attr-defined]
        del leaf._spec, leaf._value_sets  # type: ignore[attr-defined]
        for i, clause in enumerate(spec.when):
            where = f"{leaf.field}.when[{i}]"
            cond = tax.compile_condition(clause.if_, file=leaf.origin, field=f"{where}.if")
            compiled = CompiledWhen(cond=cond, range=clause.range, mean=clause.mean, sd=clause.sd)
            if clause.values is not None:
                names, weights = _resolve_values(clause.values, value_sets, file=leaf.origin, field=f"{where}.values")
                compiled.values = names
                if isinstance(clause.values, Mapping) or (isinstance(clause.values, str)):
                    compiled.set_weights = dict(zip(names, weights))
            if clause.weights is not None:
                compiled.weights = {_text(k): float(v) for k, v in clause.weights.items()}
            if clause.exclude is not None:
                compiled.exclude = frozenset(_text(v) for v in clause.exclude)
            if leaf.type in ("categorical", "multi"):
                known = set(leaf.values) | set(compiled.values or ())
                for key in [*(compiled.weights or {}), *compiled.exclude]:
                    if key not in known:
                        raise ConfigError(f"unknown value {key!r} for {leaf.path}", file=leaf.origin, field=where, expected=f"one of {sorted(known)[:30]}", got=key)
            elif compiled.values is not None or compiled.weights or compiled.exclude:
                raise ConfigError(f"{leaf.type} attribute {leaf.path}: when-clauses may set range/mean/sd only", file=leaf.origin, field=where)
            if compiled.range is not None and compiled.range[0] > compiled.range[1]:
                raise ConfigError("range low exceeds high", file=leaf.origin, field=f"{where}.range", got=list(compiled.range))
            leaf.when.append(compiled)
        if spec.applies_if is not None:
            leaf.applies_if = tax.compile_condition(spec.applies_if, file=leaf.origin, field=f"{leaf.field}.applies_if")
        if spec.follows is not None:
            follow = spec.follows if isinstance(spec.follows, FollowSpec) else FollowSpec(attribute=spec.follows)
            try:
                target = tax.resolve(follow.attribute)
            except KeyError as exc:
                raise ConfigError(str(exc.args[0]), file=leaf.origin, field=f"{leaf.field}.follows", got=follow.attribute) from None
            other = tax.by_path[target]
            if other.type not in ("int", "float", "categorical"):
                raise ConfigError("'follows' needs a numeric or ordinal categorical attribute", file=leaf.origin, field=f"{leaf.field}.follows", got=target)
            leaf.follows = (target, follow.direction, follow.spread)


def _compile_fields(fields: dict[str, tuple[Any, str]], tax: Taxonomy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (value, file) in fields.items():
        where = f"persona_fields.{name}"
        if name == "big_five":
            if not isinstance(value, Mapping) or set(value) - set(_BIG_FIVE):
                raise ConfigError("big_five maps trait names to attributes", file=file, field=where, expected=f"keys among {list(_BIG_FIVE)}", got=value)
            out[name] = {trait: _field_path(tax, v, file=file, field=f"{where}.{trait}") for trait, v in value.items()}
        elif isinstance(value, list):
            out[name] = [_field_path(tax, v, file=file, field=where) for v in value]
        else:
            out[name] = [_field_path(tax, value, file=file, field=where)]
    return out


def _field_path(tax: Taxonomy, name: Any, *, file: str, field: str) -> str:
    try:
        return tax.resolve(str(name))
    except KeyError as exc:
        raise ConfigError(str(exc.args[0]), file=file, field=field, got=name) from None


def _order_core(tax: Taxonomy) -> None:
    """Put core leaves in dependency order (stable by declaration); reject cycles."""
    core = [leaf for leaf in tax.leaves if leaf.tier == "core"]
    core_paths = {leaf.path for leaf in core}
    placed: list[Leaf] = []
    done: set[str] = set()
    visiting: set[str] = set()

    def visit(leaf: Leaf, chain: list[str]) -> None:
        if leaf.path in done:
            return
        if leaf.path in visiting:
            cycle = chain[chain.index(leaf.path):] + [leaf.path]
            raise ConfigError("core attributes depend on each other in a cycle", file=leaf.origin, field=leaf.field, got=" → ".join(cycle))
        visiting.add(leaf.path)
        for dep in sorted(leaf.deps & core_paths, key=lambda p: [x.path for x in core].index(p)):
            visit(tax.by_path[dep], chain + [leaf.path])
        visiting.discard(leaf.path)
        done.add(leaf.path)
        placed.append(leaf)

    for leaf in core:
        visit(leaf, [])
    rest = [leaf for leaf in tax.leaves if leaf.tier != "core"]
    tax.leaves = placed + rest
