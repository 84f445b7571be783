"""Bring your own personas: one-line personas written by others become structured personas.

Text-to-persona (:func:`~personae.population.craft.personas_from_texts`) asks who would
read a text. This module asks what a persona line *says*: the model copies the values the
line states into :class:`ParsedPersona` (every field optional, ``None`` = not stated), then a
deterministic grounding check (:func:`ground`) keeps only what the line supports:

* every content word of a kept value appears in the line (case, accents and simple endings
  folded: "restoring" matches "restores");
* an age is a number written in the line;
* a gender is written as ``female``/``male``/``non-binary`` only when the line holds one of
  its words ("woman", "father", "she", ...; ``personae/data/parse_lexicon.yaml``);
* a nationality is named in the line, or its country/adjective pair is ("from Slovenia" →
  "Slovenian");
* a name is a short span of capitalised words of the line, not the whole line, not a place,
  nationality or gender word;
* list values are de-duplicated; no value may be (nearly) the whole line.

Everything dropped is counted by field and reason (:class:`ParseReport`) and listed on the
persona (``attributes["parse.dropped"]``). The line itself is kept as ``description`` and
``attributes["source.text"]``. A line that states no name gets the placeholder name
``Persona <line>`` and ``attributes["parse.name_stated"] = False``.

Input (:func:`read_persona_lines`): ``.txt`` one persona per line (blank lines and ``#``
comments skipped), ``.jsonl`` objects with a ``persona`` (or ``input persona``) string field
(Persona Hub's dumps), ``.py`` PersonaGym's ``code/personas.py`` (read with :mod:`ast`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError, ModelOutputError
from personae.ids import stable_id
from personae.jsonl import read_jsonl_dicts
from personae.llm.gateway import Gateway
from personae.models import Persona
from personae.population.validate import derive_seed
from personae.prompts import PromptSet, render_with
from personae.validation import read_text_file, string_list_in_python

__all__ = ["ParsedPersona", "PersonaLine", "Dropped", "ParseReport", "ParseResult", "ground", "read_persona_lines", "parse_personas"]

log = logging.getLogger(__name__)

_LEXICON = Path(__file__).resolve().parent.parent / "data" / "parse_lexicon.yaml"
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset("a an the of in on at from to and or with for who whose is are was were be been by as their his her its that this very has have had into about".split())
_ENDINGS = ("ing", "es", "ed", "s")
_WHOLE_LINE = 0.8
_MAX_NAME_WORDS = 4
_MAX_ITEMS = 8
_JSONL_KEYS = ("persona", "input persona")
_PLACE_WORDS = frozenset("from in at near of to on".split())  # a capitalised span after these is a place
STRING_FIELDS = ("gender", "nationality", "location", "occupation")
LIST_FIELDS = ("interests", "values")


def _every_key_asked(schema: dict[str, Any]) -> None:
    schema["required"] = list(schema.get("properties", {}))


class ParsedPersona(BaseModel):
    """What a persona line states; ``None`` (or ``[]``) = the line does not say.

    The JSON schema asks for every key (null allowed), so a grammar-constrained model
    considers each field instead of closing the object at once; validation still accepts
    a reply that leaves keys out.
    """

    model_config = ConfigDict(json_schema_extra=_every_key_asked)

    name: str | None = Field(None, max_length=200, description="a personal name written in the line")
    age: int | None = Field(None, ge=0, le=120)
    gender: str | None = Field(None, max_length=100)
    nationality: str | None = Field(None, max_length=100)
    location: str | None = Field(None, max_length=200)
    occupation: str | None = Field(None, max_length=200)
    # maxItems is asked for, not enforced: a small bound survives into the local model's grammar
    # (personae.llm.local), so a tiny model cannot list forever; a longer list from an endpoint is
    # still read, and the grounding check counts its repeats and keeps at most _MAX_ITEMS.
    interests: list[str] = Field(default_factory=list, json_schema_extra={"maxItems": _MAX_ITEMS})
    values: list[str] = Field(default_factory=list, json_schema_extra={"maxItems": _MAX_ITEMS})


@dataclass(frozen=True)
class PersonaLine:
    """One persona line and where it came from."""

    text: str
    line: int
    file: str | None = None


class Dropped(BaseModel):
    """An extracted value the line does not support."""

    field: str
    value: Any
    reason: str


class ParseReport(BaseModel):
    """Counts of a parse run: kept fields, and dropped values by field and reason."""

    lines: int = 0
    personas: int = 0
    model_failures: int = Field(0, description="lines whose model reply never validated (kept with no fields)")
    kept: dict[str, int] = Field(default_factory=dict, description="personas with each field filled")
    dropped: dict[str, dict[str, int]] = Field(default_factory=dict, description="field → reason → dropped values")

    @property
    def dropped_total(self) -> int:
        return sum(n for reasons in self.dropped.values() for n in reasons.values())

    def summary_rows(self) -> list[tuple[str, str]]:
        """Human-readable ``(label, value)`` rows for a CLI table."""
        rows = [("personas", f"{self.personas} / {self.lines} lines"), ("model replies that failed", str(self.model_failures))]
        rows += [(f"kept: {f}", str(n)) for f, n in self.kept.items()]
        rows += [(f"dropped: {f}", ", ".join(f"{r}: {n}" for r, n in reasons.items())) for f, reasons in self.dropped.items()]
        return rows


@dataclass
class ParseResult:
    """The personas (in line order) and the counts."""

    personas: list[Persona]
    report: ParseReport


# ---- reading -----------------------------------------------------------------------------


def read_persona_lines(path: str | Path) -> list[PersonaLine]:
    """Persona lines from ``path`` (``.txt``, ``.jsonl`` or ``.py``; see the module docs).

    A bad file or record is a :class:`ConfigError` naming the file and line.
    """
    path = Path(path)
    file = str(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = []
        for number, obj in read_jsonl_dicts(path):
            key = next((k for k in _JSONL_KEYS if k in obj), None)
            if key is None:
                raise ConfigError("no persona in the record", file=file, line=number, field="persona", expected="an object with a 'persona' string (Persona Hub's format)", got=sorted(obj)[:10])
            text = obj[key]
            if not isinstance(text, str) or not text.strip():
                raise ConfigError("the persona must be a non-empty string", file=file, line=number, field=key, expected="a one-line persona description", got=text)
            out.append(PersonaLine(" ".join(text.split()), number, file))
    elif suffix == ".py":
        out = [PersonaLine(" ".join(text.split()), number, file) for number, text in string_list_in_python(path)]
    else:
        text = read_text_file(path, expected="one persona description per line")
        out = [PersonaLine(" ".join(ln.split()), number, file) for number, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise ConfigError("no persona lines in the file", file=file, expected="at least one persona line")
    return out


# ---- grounding ---------------------------------------------------------------------------


def _fold(word: str) -> str:
    text = unicodedata.normalize("NFKD", word.casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


def _stem(word: str) -> str:
    if word.isdigit() or len(word) <= 4:
        return word
    for ending in _ENDINGS:
        if word.endswith(ending) and len(word) - len(ending) >= 3:
            return word[: -len(ending)]
    return word


def _words(text: str) -> list[str]:
    return [_fold(w) for w in _WORD.findall(text)]


def _content(text: str) -> list[str]:
    return [_stem(w) for w in _words(text) if w not in _STOP]


def _has_span(haystack: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    return n > 0 and any(list(haystack[i : i + n]) == list(needle) for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class _Lexicon:
    gender: dict[str, tuple[tuple[str, ...], ...]]  # canonical → word spans
    gender_of: dict[str, str]  # folded word → canonical
    pairs: dict[str, tuple[str, ...]]  # folded country or adjective → every form of it
    places: frozenset[str]  # folded single-word countries and adjectives


@lru_cache(maxsize=1)
def _lexicon() -> _Lexicon:
    data = yaml.safe_load(_LEXICON.read_text(encoding="utf-8"))
    gender = {key: tuple(tuple(_words(w)) for w in words) for key, words in data["gender"].items()}
    gender_of = {" ".join(_words(w)): key for key, words in data["gender"].items() for w in [key, *words]}
    pairs: dict[str, set[str]] = {}
    for country, adjectives in data["nationalities"].items():
        forms = {country, *adjectives}
        for form in forms:
            pairs.setdefault(" ".join(_words(form)), set()).update(forms)
    places = frozenset(k for k in pairs if " " not in k)
    return _Lexicon(gender, gender_of, {k: tuple(sorted(v)) for k, v in pairs.items()}, places)


class _Line:
    """A line's words, folded and stemmed, for the checks."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.raw = _WORD.findall(text)
        self.words = [_fold(w) for w in self.raw]
        self.stems = {_stem(w) for w in self.words}
        self.content = [_stem(w) for w in self.words if w not in _STOP]

    def supports(self, value: str) -> str | None:
        """``None`` if every content word of ``value`` is in the line, else why not."""
        content = _content(value)
        if not content:
            return "empty"
        if len(set(self.content)) >= 4 and len(set(content) & set(self.content)) >= _WHOLE_LINE * len(set(self.content)):
            return "whole line"
        if not set(content) <= self.stems:
            return "not in the line"
        return None


def _check_name(line: _Line, value: str) -> str | None:
    words = _WORD.findall(value)
    if not words:
        return "empty"
    why = line.supports(value)
    if why == "whole line":
        return why
    folded = [_fold(w) for w in words]
    if len(words) > _MAX_NAME_WORDS or any(w.isdigit() for w in words):
        return "not a name"
    for i in range(len(line.words) - len(folded) + 1):
        if line.words[i : i + len(folded)] == folded:
            span = line.raw[i : i + len(folded)]
            break
    else:
        return "not in the line"
    lex = _lexicon()
    if not all(w[:1].isupper() for w in span) or all(w in _STOP or w in lex.places or w in lex.gender_of for w in folded):
        return "not a name"
    if i > 0 and line.words[i - 1] in _PLACE_WORDS:
        return "a place, not a name"
    return None


def _check_gender(line: _Line, value: str) -> tuple[str | None, str | None]:
    lex = _lexicon()
    canonical = lex.gender_of.get(" ".join(_words(value)))
    if canonical is None:
        return None, "not a gender"
    if not any(_has_span(line.words, span) for span in lex.gender[canonical]):
        return None, "not in the line"
    return canonical, None


def _check_nationality(line: _Line, value: str) -> str | None:
    forms = _lexicon().pairs.get(" ".join(_words(value)))
    if forms is None:  # not in the table: its own words must be in the line
        return line.supports(value)
    return None if any(_has_span(line.words, _words(form)) for form in forms) else "not in the line"


def ground(text: str, parsed: ParsedPersona) -> tuple[dict[str, Any], list[Dropped]]:
    """The fields of ``parsed`` that ``text`` supports, and every value dropped with its reason."""
    line = _Line(text)
    kept: dict[str, Any] = {}
    dropped: list[Dropped] = []

    def drop(field: str, value: Any, reason: str) -> None:
        dropped.append(Dropped(field=field, value=value, reason=reason))

    if parsed.age is not None:
        if str(parsed.age) in line.words:
            kept["age"] = parsed.age
        else:
            drop("age", parsed.age, "not in the line")
    for field in STRING_FIELDS:
        value = getattr(parsed, field)
        if value is None or not value.strip():
            continue
        value = " ".join(value.split())
        if field == "gender":
            canonical, why = _check_gender(line, value)
            value = canonical or value
        elif field == "nationality":
            why = _check_nationality(line, value)
        else:
            why = line.supports(value)
        if why:
            drop(field, value, why)
        else:
            kept[field] = value
    if parsed.name is not None and parsed.name.strip():
        name = " ".join(parsed.name.split())
        why = _check_name(line, name)
        if why is None and any(_words(name) == _words(kept[f]) for f in STRING_FIELDS if f in kept):
            why = "another field's value"
        if why:
            drop("name", name, why)
        else:
            kept["name"] = name
    for field in LIST_FIELDS:
        seen: set[frozenset[str]] = set()
        items: list[str] = []
        for item in getattr(parsed, field):
            item = " ".join(item.split())
            if not item:
                continue
            why = line.supports(item)
            key = frozenset(_content(item))
            if why is None and key in seen:
                why = "repeated"
            if why is None and len(items) >= _MAX_ITEMS:
                why = "too many"
            if why:
                drop(field, item, why)
                continue
            seen.add(key)
            items.append(item)
        if items:
            kept[field] = items
    return kept, dropped


# ---- the model pass ----------------------------------------------------------------------


def _persona(source: PersonaLine, kept: dict[str, Any], dropped: list[Dropped], *, failed: bool) -> Persona:
    attributes: dict[str, Any] = {"source.text": source.text, "source.line": source.line, "parse.name_stated": "name" in kept}
    if source.file is not None:
        attributes["source.file"] = source.file
    if "nationality" in kept:
        attributes["nationality"] = kept["nationality"]
    if "interests" in kept:
        attributes["interests"] = kept["interests"]
    if dropped:
        attributes["parse.dropped"] = [d.model_dump() for d in dropped]
    if failed:
        attributes["parse.model_failed"] = True
    return Persona(
        id=stable_id("persona", "parsed", source.text),
        name=kept.get("name") or f"Persona {source.line}",
        age=kept.get("age"),
        gender=kept.get("gender"),
        location=kept.get("location"),
        occupation=kept.get("occupation"),
        values=kept.get("values", []),
        description=source.text,
        attributes=attributes,
    )


async def parse_personas(
    lines: Iterable[PersonaLine | str],
    gateway: Gateway,
    *,
    seed: int = 0,
    prompts: PromptSet | None = None,
    role: str = "crafter",
    max_chars: int = 2000,
) -> ParseResult:
    """One structured persona per line, holding only what the line states (see the module docs).

    Calls run concurrently (the gateway limits them); requests are seeded by the line, so
    a rerun replays from the cache. A reply that never validates leaves that persona with
    no fields (counted as ``model_failures``); a failing model call raises.
    """
    sources = [s if isinstance(s, PersonaLine) else PersonaLine(" ".join(s.split()), i) for i, s in enumerate(lines, start=1)]

    async def one(source: PersonaLine) -> tuple[Persona, dict[str, Any], list[Dropped]]:
        text = source.text[:max_chars]
        prompt = render_with(prompts, "population_parse_line", {"line": text})
        try:
            parsed = await gateway.structured([{"role": "user", "content": prompt}], ParsedPersona, role=role, seed=derive_seed(seed, text, "parse-line"), max_tokens=512)
        except ModelOutputError as exc:
            log.warning("line %d: the model's reply never validated; keeping the line with no fields: %s", source.line, exc)
            return _persona(source, {}, [], failed=True), {}, []
        kept, dropped = ground(text, parsed)
        return _persona(source, kept, dropped, failed=False), kept, dropped

    done = await asyncio.gather(*(one(s) for s in sources))
    kept: Counter = Counter(field for _, fields, _ in done for field in fields)
    dropped: dict[str, Counter] = {}
    for _, _, gone in done:
        for d in gone:
            dropped.setdefault(d.field, Counter())[d.reason] += 1
    report = ParseReport(
        lines=len(sources),
        personas=len(done),
        model_failures=sum(1 for p, _, _ in done if p.attributes.get("parse.model_failed")),
        kept={f: kept[f] for f in ("name", "age", *STRING_FIELDS, *LIST_FIELDS) if kept[f]},
        dropped={f: dict(c.most_common()) for f, c in sorted(dropped.items())},
    )
    return ParseResult([p for p, _, _ in done], report)

