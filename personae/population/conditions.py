"""Declarative conditions and rules over sampled attributes (parsed, never ``eval``-ed).

A condition is predicates joined by ``and``::

    age < 18
    employment_status in [student, job seeker] and age >= 16
    years_in_current_job <= age - 16          # numeric right-hand side may name an attribute
    hobbies contains gardening                 # multi-valued attributes

A rule is ``if <condition> then <condition>`` (or a bare condition that must always
hold), in string form or as ``{when: ..., then: ..., name: ...}``. A predicate on an
attribute the persona does not have is *unknown*: a rule only fails when its ``when``
is true and some ``then`` predicate is false, so absent attributes never fail a rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from personae.errors import ConfigError

__all__ = ["Predicate", "Condition", "Rule", "parse_condition", "parse_rule", "OPS"]

OPS = ("==", "!=", "<=", ">=", "<", ">", "not in", "in", "contains")
_NUMERIC_OPS = {"<", "<=", ">", ">="}
_PRED = re.compile(r"^\s*(?P<path>[A-Za-z_][\w.]*)\s*(?P<op>==|!=|<=|>=|<|>|\bnot\s+in\b|\bin\b|\bcontains\b|=)\s*(?P<rhs>.+?)\s*$", re.DOTALL)
_RULE = re.compile(r"^\s*if\s+(?P<when>.+?)\s+then\s+(?P<then>.+?)\s*$", re.IGNORECASE | re.DOTALL)
_REF = re.compile(r"^(?P<path>[A-Za-z_][\w.]*)\s*(?:(?P<sign>[+-])\s*(?P<num>\d+(?:\.\d+)?))?$")

Resolver = Callable[[str], str]
"""Maps a name the user wrote (full path or unique leaf name) to a taxonomy path, or raises KeyError."""


@dataclass(frozen=True)
class Predicate:
    """``path op value``; ``ref`` (+ ``offset``) makes the right-hand side another attribute."""

    path: str
    op: str
    value: Any = None
    ref: str | None = None
    offset: float = 0.0

    @property
    def paths(self) -> tuple[str, ...]:
        """Every attribute the predicate reads."""
        return (self.path,) if self.ref is None else (self.path, self.ref)

    def rhs(self, attrs: Mapping[str, Any]) -> Any:
        """The right-hand value, or ``None`` when it names an absent attribute."""
        if self.ref is None:
            return self.value
        other = attrs.get(self.ref)
        if other is None or isinstance(other, (str, list)):
            return None
        return other + self.offset

    def evaluate(self, attrs: Mapping[str, Any]) -> bool | None:
        """True/False, or ``None`` when an attribute it needs is absent."""
        got = attrs.get(self.path)
        if got is None:
            return None
        rhs = self.rhs(attrs)
        if rhs is None:
            return None
        return _apply(self.op, got, rhs)

    def __str__(self) -> str:
        if self.ref is not None:
            tail = "" if not self.offset else f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
            return f"{self.path} {self.op} {self.ref}{tail}"
        if isinstance(self.value, tuple):
            return f"{self.path} {self.op} [{', '.join(map(str, self.value))}]"
        return f"{self.path} {self.op} {self.value}"


def _apply(op: str, got: Any, rhs: Any) -> bool:
    if isinstance(got, list):  # multi-valued attribute
        if op == "contains" or op == "==":
            return rhs in got
        if op == "!=":
            return rhs not in got
        if op == "in":
            return all(v in rhs for v in got)
        if op == "not in":
            return not any(v in rhs for v in got)
        return False
    if op == "==":
        return got == rhs
    if op == "!=":
        return got != rhs
    if op == "in":
        return got in rhs
    if op == "not in":
        return got not in rhs
    if op == "contains":
        return False
    if isinstance(got, str):
        return False
    if op == "<":
        return got < rhs
    if op == "<=":
        return got <= rhs
    if op == ">":
        return got > rhs
    return got >= rhs


@dataclass(frozen=True)
class Condition:
    """Predicates that must all hold."""

    predicates: tuple[Predicate, ...]
    text: str = ""

    @property
    def paths(self) -> frozenset[str]:
        """Every attribute the condition reads."""
        return frozenset(p for pred in self.predicates for p in pred.paths)

    def evaluate(self, attrs: Mapping[str, Any]) -> bool | None:
        """False if any predicate is false, else ``None`` if any is unknown, else True."""
        unknown = False
        for pred in self.predicates:
            result = pred.evaluate(attrs)
            if result is False:
                return False
            if result is None:
                unknown = True
        return None if unknown else True

    def __str__(self) -> str:
        return self.text or " and ".join(map(str, self.predicates))


@dataclass(frozen=True)
class Rule:
    """``if when then then``; violated only when ``when`` is true and a ``then`` predicate false."""

    name: str
    then: Condition
    when: Condition | None = None
    source: str = ""
    paths: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", self.then.paths | (self.when.paths if self.when else frozenset()))

    def violated(self, attrs: Mapping[str, Any]) -> bool:
        """Whether ``attrs`` break this rule (absent attributes never do)."""
        if self.when is not None and self.when.evaluate(attrs) is not True:
            return False
        return any(pred.evaluate(attrs) is False for pred in self.then.predicates)

    def __str__(self) -> str:
        return f"if {self.when} then {self.then}" if self.when else str(self.then)


# ---- parsing ----------------------------------------------------------------------


def _split_top(text: str, sep: str, *, word: bool = True) -> list[str]:
    """Split on ``sep`` (case-insensitive; word-bounded if ``word``) outside quotes and brackets."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    low = text.lower()
    n = len(sep)
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'" and (i == 0 or not text[i - 1].isalnum()):
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0 and low.startswith(sep, i) and (not word or ((i == 0 or text[i - 1].isspace()) and (i + n >= len(text) or text[i + n].isspace()))):
            parts.append(text[start:i])
            start = i + n
            i += n
            continue
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _scalar(token: str) -> Any:
    token = token.strip()
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "\"'":
        return token[1:-1]
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _list(token: str, *, file: str | None, field: str) -> tuple[Any, ...]:
    token = token.strip()
    if not (token.startswith("[") and token.endswith("]")):
        raise ConfigError("'in' needs a list like [a, b]", file=file, field=field, expected="[value, value, ...]", got=token)
    inner = token[1:-1].strip()
    if not inner:
        return ()
    return tuple(_scalar(item) for item in _split_top(inner, ",", word=False))


def _parse_predicate(text: str, resolve: Resolver, *, file: str | None, field: str) -> Predicate:
    match = _PRED.match(text)
    if match is None:
        raise ConfigError("cannot parse condition", file=file, field=field, expected=f"'<attribute> <op> <value>' with op one of {list(OPS)}", got=text)
    op = re.sub(r"\s+", " ", match["op"]).lower()
    op = "==" if op == "=" else op
    path = _resolve(resolve, match["path"], file=file, field=field)
    rhs = match["rhs"]
    if op in ("in", "not in"):
        return Predicate(path, op, tuple(_as_text(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else v for v in _list(rhs, file=file, field=field)))
    ref = _REF.match(rhs.strip())
    if ref is not None and not (rhs.strip()[0] in "\"'"):
        try:
            other = resolve(ref["path"])
        except KeyError:
            other = None
        if other is not None and op in _NUMERIC_OPS | {"==", "!="}:
            sign = -1.0 if ref["sign"] == "-" else 1.0
            return Predicate(path, op, None, ref=other, offset=sign * float(ref["num"] or 0))
    value = _scalar(rhs)
    if op in _NUMERIC_OPS and not isinstance(value, (int, float)):
        raise ConfigError(f"'{op}' needs a number or a numeric attribute", file=file, field=field, expected="a number", got=rhs)
    return Predicate(path, op, value)


def _resolve(resolve: Resolver, name: str, *, file: str | None, field: str) -> str:
    try:
        return resolve(name)
    except KeyError as exc:
        detail = exc.args[0] if exc.args else f"unknown attribute {name!r}"
        raise ConfigError(str(detail), file=file, field=field, expected="a taxonomy attribute path or unique leaf name", got=name) from None


def parse_condition(raw: str | Mapping[str, Any], resolve: Resolver, *, file: str | None = None, field: str = "condition") -> Condition:
    """Parse ``raw``: a string (``a < 3 and b in [x, y]``) or a mapping ``{attr: {op: value}}``."""
    if isinstance(raw, Mapping):
        preds: list[Predicate] = []
        for name, spec in raw.items():
            ops = spec if isinstance(spec, Mapping) else {"==": spec}
            for op, value in ops.items():
                op = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "in": "in", "not_in": "not in", "contains": "contains"}.get(str(op), str(op))
                if op not in OPS:
                    raise ConfigError("unknown operator", file=file, field=f"{field}.{name}", expected=f"one of {list(OPS)} or eq/ne/lt/le/gt/ge/in/not_in/contains", got=op)
                path = _resolve(resolve, str(name), file=file, field=f"{field}.{name}")
                if op in ("in", "not in"):
                    if not isinstance(value, (list, tuple)):
                        raise ConfigError(f"'{op}' needs a list", file=file, field=f"{field}.{name}", expected="a list", got=value)
                    value = tuple(v if isinstance(v, (int, float)) and not isinstance(v, bool) else _as_text(v) for v in value)
                elif not (isinstance(value, (int, float)) and not isinstance(value, bool)):
                    value = _as_text(value)
                preds.append(Predicate(path, op, value))
        if not preds:
            raise ConfigError("empty condition", file=file, field=field, expected="at least one predicate")
        return Condition(tuple(preds))
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError("a condition must be a non-empty string or a mapping", file=file, field=field, got=raw)
    parts: list[str] = []
    for part in _split_top(raw, "and"):
        if parts and _PRED.match(part) is None:
            parts[-1] += " and " + part  # "and" inside a value, e.g. "Middle East and North Africa"
        else:
            parts.append(part)
    preds = [_parse_predicate(p, resolve, file=file, field=field) for p in parts]
    return Condition(tuple(preds), text=raw.strip())


def parse_rule(raw: str | Mapping[str, Any], resolve: Resolver, *, file: str | None = None, field: str = "rule") -> Rule:
    """Parse a rule: ``"if <cond> then <cond>"``, a bare condition, or ``{when, then, name}``."""
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"when", "then", "name", "if"}
        if unknown:
            raise ConfigError("unknown keys in rule", file=file, field=field, expected="when, then, name", got=sorted(unknown))
        if "then" not in raw:
            raise ConfigError("a rule needs 'then'", file=file, field=field, expected="{when: <condition>, then: <condition>}")
        when_raw = raw.get("when", raw.get("if"))
        when = None if when_raw is None else parse_condition(when_raw, resolve, file=file, field=f"{field}.when")
        then = parse_condition(raw["then"], resolve, file=file, field=f"{field}.then")
        name = str(raw.get("name") or "")
        rule = Rule(name=name, then=then, when=when, source=f"{file or '<input>'}:{field}")
        return rule if name else Rule(name=str(rule), then=then, when=when, source=rule.source)
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError("a rule must be a string or a mapping", file=file, field=field, got=raw)
    match = _RULE.match(raw)
    if match is None:
        then = parse_condition(raw, resolve, file=file, field=field)
        return Rule(name=raw.strip(), then=then, source=f"{file or '<input>'}:{field}")
    when = parse_condition(match["when"], resolve, file=file, field=field)
    then = parse_condition(match["then"], resolve, file=file, field=field)
    return Rule(name=raw.strip(), then=then, when=when, source=f"{file or '<input>'}:{field}")
