"""Human targets: what real people answered, as microdata or aggregated distributions.

Two forms, both mapped onto the instrument's questions and option codes and onto the
population's taxonomy attributes (so cells line up with the personas' ``attributes``):

**Microdata** — one row per respondent (CSV or Parquet). Columns are question ids
(values: option codes or labels; numbers for numeric questions; ``a|b`` for multiple
choice and rankings), taxonomy attributes (a leaf name such as ``age_band`` or a full
path), and optionally ``respondent_id`` and a ``weight`` column. Any other column is an
error: nothing is dropped silently. A YAML descriptor may point at the file and rename::

    kind: microdata
    file: opinion_microdata.csv
    source: "where the data come from"
    weight: wt
    columns: {q1: trust_people, agegrp: age_band}     # file column → question id / attribute
    recode: {trust_people: {"1": strongly disagree}}  # raw value → option code

**Aggregates** — distributions per question, overall and per demographic cell, as YAML::

    kind: aggregate
    source: "..."
    questions:
      trust_people:
        overall: {n: 1000, distribution: {agree: 0.31, disagree: 0.22, ...}}
        cells:
          - {where: {age_band: "18-24"}, n: 120, distribution: {...}}

or as a CSV with columns ``question, option, share`` (or ``count``), optional ``n``,
and one column per cell attribute (empty = overall).

A target that names an unknown question, option, attribute or attribute value raises
one :class:`~personae.errors.ConfigError` naming the file and the column or field.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from personae.errors import ConfigError
from personae.population.taxonomy import Taxonomy, load_taxonomy
from personae.survey.instrument import Instrument, Question
from personae.validation import load_data_file

__all__ = ["Distribution", "HumanTargets", "load_targets", "cell_key", "cell_label", "microdata_targets"]

Cell = tuple[tuple[str, str], ...]
"""A demographic cell: sorted (taxonomy path, value) pairs; ``()`` is the whole population."""


def cell_key(where: Mapping[str, Any]) -> Cell:
    return tuple(sorted((str(k), str(v)) for k, v in where.items()))


def cell_label(cell: Cell) -> str:
    return "overall" if not cell else ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in cell)


class Distribution(BaseModel):
    """Shares per answer (option code, or a numeric value as text), and the sample size if known.

    For multiple-choice questions the shares are selection rates (each in [0, 1], not
    summing to 1); otherwise they sum to 1 (rankings: the first choice).
    """

    model_config = ConfigDict(extra="forbid")

    shares: dict[str, float]
    n: float | None = Field(None, description="respondents behind it (weighted when weights were given)")


class HumanTargets(BaseModel):
    """Human answer distributions per question and per cell (``cells[qid][cell_label]``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = ""
    file: str = ""
    kind: str = "aggregate"
    cells: dict[str, dict[str, Distribution]] = Field(default_factory=dict)
    cell_attributes: dict[str, dict[str, dict[str, str]]] = Field(default_factory=dict, description="qid → label → where")

    def overall(self, qid: str) -> Distribution | None:
        return self.cells.get(qid, {}).get("overall")

    def add(self, qid: str, where: Mapping[str, str], dist: Distribution) -> None:
        label = cell_label(cell_key(where))
        self.cells.setdefault(qid, {})[label] = dist
        self.cell_attributes.setdefault(qid, {})[label] = dict(where)


# ---- mapping --------------------------------------------------------------------
def _attribute(taxonomy: Taxonomy, name: str, *, file: str, field: str) -> str:
    try:
        return taxonomy.resolve(name)
    except KeyError as exc:
        raise ConfigError("a target names an attribute the population's taxonomy does not have", file=file, field=field,
                          expected="a taxonomy attribute (leaf name or path)", got=f"{name} ({exc.args[0]})") from None


def _attribute_value(taxonomy: Taxonomy, path: str, value: Any, *, file: str, field: str) -> str:
    leaf = taxonomy.by_path[path]
    text = str(value).strip()
    if leaf.type in ("categorical", "multi") and leaf.domain and text not in leaf.domain:
        raise ConfigError(f"a target gives {path} a value the taxonomy does not have", file=file, field=field,
                          expected=f"one of {sorted(leaf.domain)[:20]}", got=text)
    return text


def _code(question: Question, raw: Any, recode: Mapping[str, str], *, file: str, field: str) -> str:
    text = str(raw).strip()
    text = str(recode.get(text, text))
    if question.type == "numeric":
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"question {question.id!r} is numeric but a target value is not a number", file=file, field=field, expected="a number", got=text) from None
        return f"{number:g}"
    option = question.option(text) or question.by_label(text)
    if option is None:
        raise ConfigError(f"a target value is not an option of question {question.id!r}", file=file, field=field,
                          expected=f"an option code or label among {[o.code for o in question.options]}", got=text)
    return option.code


def _normalised(question: Question, counts: Mapping[str, float], n: float | None) -> Distribution:
    total = sum(counts.values())
    if total <= 0:
        return Distribution(shares={}, n=n)
    if question.type == "multiple":
        base = n if n else total
        return Distribution(shares={k: v / base for k, v in counts.items()}, n=n)
    return Distribution(shares={k: v / total for k, v in counts.items()}, n=n if n is not None else total)


# ---- microdata ------------------------------------------------------------------
def _read_frame(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError("target file not found", file=str(path), expected="an existing CSV or Parquet file")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def microdata_targets(
    frame: pd.DataFrame, instrument: Instrument, taxonomy: Taxonomy, *, file: str, columns: Mapping[str, str] | None = None,
    recode: Mapping[str, Mapping[str, str]] | None = None, weight: str | None = None, source: str = "",
) -> HumanTargets:
    """Targets from one-row-per-respondent data: overall and per single-attribute cell."""
    columns = dict(columns or {})
    recode = recode or {}
    qids = {q.id for q in instrument.questions}
    questions: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for column in frame.columns:
        name = columns.get(column, column)
        if column in ("respondent_id", weight):
            continue
        if name in qids:
            questions[column] = name
            continue
        try:
            attributes[column] = taxonomy.resolve(name)
        except KeyError:
            raise ConfigError("a target column maps to no question and no taxonomy attribute", file=file, field=f"column {column!r}",
                              expected=f"a question id among {sorted(qids)}, a taxonomy attribute, respondent_id or the weight column (or map it under 'columns')",
                              got=column) from None
    if weight is not None and weight not in frame.columns:
        raise ConfigError("the weight column is missing", file=file, field="weight", expected="a column of the file", got=weight)
    if not questions:
        raise ConfigError("the target file has no question column", file=file, field="columns", expected=f"columns named after question ids {sorted(qids)}")
    weights = [1.0] * len(frame) if weight is None else [float(w) for w in frame[weight]]
    cells: list[dict[str, str]] = [{}]
    records = frame.to_dict("records")
    for row_no, row in enumerate(records):
        for column, path in attributes.items():
            row[column] = _attribute_value(taxonomy, path, row[column], file=file, field=f"column {column!r} (row {row_no + 2})")
    for column, path in attributes.items():
        cells += [{path: v} for v in sorted({r[column] for r in records})]
    targets = HumanTargets(source=source, file=file, kind="microdata")
    for column, qid in questions.items():
        question = instrument.question(qid)
        answers: list[tuple[list[str], float, dict[str, str]]] = []
        for row_no, (row, w) in enumerate(zip(records, weights, strict=True)):
            raw = row[column]
            if raw is None or (isinstance(raw, float) and math.isnan(raw)) or str(raw).strip() == "":
                continue  # not asked (skip logic) or no answer
            parts = str(raw).split("|") if question.type in ("multiple", "ranking") else [raw]
            codes = [_code(question, p, recode.get(qid, {}), file=file, field=f"column {column!r} (row {row_no + 2})") for p in parts if str(p).strip()]
            if question.type == "ranking":
                codes = codes[:1]
            where = {path: row[col] for col, path in attributes.items()}
            answers.append((codes, w, where))
        for where in cells:
            counts: dict[str, float] = {}
            n = 0.0
            for codes, w, row_where in answers:
                if any(row_where.get(k) != v for k, v in where.items()):
                    continue
                n += w
                for code in codes:
                    counts[code] = counts.get(code, 0.0) + w
            if n > 0:
                targets.add(qid, where, _normalised(question, counts, n))
    return targets


# ---- aggregates -----------------------------------------------------------------
def _aggregate_yaml(data: Mapping[str, Any], instrument: Instrument, taxonomy: Taxonomy, *, file: str) -> HumanTargets:
    targets = HumanTargets(source=str(data.get("source", "")), file=file, kind="aggregate")
    questions = data.get("questions")
    if not isinstance(questions, Mapping) or not questions:
        raise ConfigError("aggregate targets need a 'questions' mapping", file=file, field="questions", expected="question id → {overall, cells}")
    qids = {q.id for q in instrument.questions}
    for qid, spec in questions.items():
        if qid not in qids:
            raise ConfigError("a target names a question the instrument does not have", file=file, field=f"questions.{qid}", expected=f"one of {sorted(qids)}", got=qid)
        question = instrument.question(qid)
        entries = []
        if isinstance(spec, Mapping) and "overall" in spec:
            entries.append(({}, spec["overall"], f"questions.{qid}.overall"))
        for k, cell in enumerate((spec or {}).get("cells") or [] if isinstance(spec, Mapping) else []):
            entries.append((cell.get("where") or {}, cell, f"questions.{qid}.cells[{k}]"))
        if not entries:
            raise ConfigError("a target question has neither 'overall' nor 'cells'", file=file, field=f"questions.{qid}", expected="overall and/or cells")
        for where_raw, entry, field in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("distribution"), Mapping):
                raise ConfigError("a target cell needs a 'distribution' mapping", file=file, field=f"{field}.distribution", expected="option code → share or count")
            where = {}
            for name, value in where_raw.items():
                path = _attribute(taxonomy, str(name), file=file, field=f"{field}.where.{name}")
                where[path] = _attribute_value(taxonomy, path, value, file=file, field=f"{field}.where.{name}")
            counts = {}
            for raw, share in entry["distribution"].items():
                code = _code(question, raw, {}, file=file, field=f"{field}.distribution.{raw}")
                counts[code] = counts.get(code, 0.0) + float(share)
            targets.add(qid, where, _normalised(question, counts, float(entry["n"]) if entry.get("n") is not None else None))
    return targets


def _aggregate_csv(frame: pd.DataFrame, instrument: Instrument, taxonomy: Taxonomy, *, file: str, source: str = "") -> HumanTargets:
    value_column = "share" if "share" in frame.columns else "count"
    qids = {q.id for q in instrument.questions}
    attributes = {}
    for column in frame.columns:
        if column in ("question", "option", "share", "count", "n"):
            continue
        attributes[column] = _attribute(taxonomy, column, file=file, field=f"column {column!r}")
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for row_no, row in enumerate(frame.to_dict("records")):
        qid = str(row["question"]).strip()
        field = f"row {row_no + 2}"
        if qid not in qids:
            raise ConfigError("a target names a question the instrument does not have", file=file, field=f"column 'question' ({field})", expected=f"one of {sorted(qids)}", got=qid)
        question = instrument.question(qid)
        where = tuple(sorted(
            (path, _attribute_value(taxonomy, path, row[col], file=file, field=f"column {col!r} ({field})"))
            for col, path in attributes.items() if str(row[col]).strip() not in ("", "nan", "None")
        ))
        code = _code(question, row["option"], {}, file=file, field=f"column 'option' ({field})")
        group = groups.setdefault((qid, where), {"counts": {}, "n": None})
        group["counts"][code] = group["counts"].get(code, 0.0) + float(row[value_column])
        if "n" in row and str(row["n"]).strip() not in ("", "nan"):
            group["n"] = float(row["n"])
    targets = HumanTargets(source=source, file=file, kind="aggregate")
    for (qid, where), group in groups.items():
        targets.add(qid, dict(where), _normalised(instrument.question(qid), group["counts"], group["n"]))
    return targets


def load_targets(path: str | os.PathLike, instrument: Instrument, *, taxonomy: Taxonomy | None = None) -> HumanTargets:
    """Load human targets (microdata or aggregates; see the module doc) mapped onto ``instrument`` and ``taxonomy``."""
    path = Path(path)
    file = str(path)
    taxonomy = taxonomy or load_taxonomy()
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        frame = _read_frame(path)
        if {"question", "option"} <= set(frame.columns) and ({"share", "count"} & set(frame.columns)):
            return _aggregate_csv(frame, instrument, taxonomy, file=file)
        return microdata_targets(frame, instrument, taxonomy, file=file)
    data = load_data_file(path)
    if not isinstance(data, Mapping):
        raise ConfigError("expected a mapping at the top level of the target file", file=file, expected="kind: microdata | aggregate")
    kind = data.get("kind", "aggregate")
    if kind == "aggregate":
        if "file" in data:
            frame = _read_frame(path.parent / str(data["file"]))
            return _aggregate_csv(frame, instrument, taxonomy, file=str(path.parent / str(data["file"])), source=str(data.get("source", "")))
        return _aggregate_yaml(data, instrument, taxonomy, file=file)
    if kind == "microdata":
        if "file" not in data:
            raise ConfigError("microdata targets need the data 'file'", file=file, field="file", expected="a CSV or Parquet file, relative to this one")
        data_file = path.parent / str(data["file"])
        unknown = sorted(set(data) - {"kind", "file", "source", "weight", "columns", "recode"})
        if unknown:
            raise ConfigError("unknown keys in the target file", file=file, field=unknown[0], expected="kind, file, source, weight, columns, recode")
        return microdata_targets(
            _read_frame(data_file), instrument, taxonomy, file=str(data_file), columns=data.get("columns"),
            recode=data.get("recode"), weight=data.get("weight"), source=str(data.get("source", "")),
        )
    raise ConfigError("unknown kind of target file", file=file, field="kind", expected="microdata or aggregate", got=kind)
