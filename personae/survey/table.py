"""The tidy answer table: one row per respondent × question × chosen option.

Columns (every run, in this order): ``respondent_id``, ``persona_name``, one
``attr.<name>`` column per scalar persona attribute (taxonomy paths as keys, plus
``age`` and ``gender`` when set and not already among them), ``question_id``, ``question_type``, ``position``
(the order asked, from 0), ``question_text`` (after piping), ``option`` (the option
code; empty for numeric and text answers), ``option_label``, ``scale_position`` (0-based
on an ordinal scale), ``rank`` (rankings: 1 = most preferred), ``value`` (numeric
answers), ``raw_text`` (the respondent's own words or the structured reply), ``status``,
``mode``, ``option_order`` (the codes as shown, ``|``-separated), ``conversation_id``.
A multiple-choice answer gives one row per selected option; an answer with no option
(refused by the model, unclassified, failed) gives one row with an empty ``option``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from personae.models import Conversation, Persona
from personae.population import META_KEY
from personae.survey.graph import answer_records
from personae.survey.instrument import Instrument

__all__ = ["COLUMNS", "answer_rows", "answer_table", "write_table", "read_table", "persona_attributes"]

COLUMNS = (
    "respondent_id", "persona_name", "question_id", "question_type", "position", "question_text", "option",
    "option_label", "scale_position", "rank", "value", "raw_text", "status", "mode", "option_order", "conversation_id",
)


def persona_attributes(persona: Persona) -> dict[str, Any]:
    """A persona's scalar attributes (taxonomy path → value), with ``age`` and ``gender`` when set."""
    out: dict[str, Any] = {}
    for key, value in persona.attributes.items():
        if key == META_KEY or isinstance(value, (dict, list)):
            continue
        out[key] = value
    for name in ("age", "gender"):  # typed fields the taxonomy does not already hold
        value = getattr(persona, name)
        if value is not None and value != "" and not any(k == name or k.endswith(f".{name}") for k in out):
            out[name] = value
    return out


def answer_rows(conversation: Conversation, instrument: Instrument) -> list[dict[str, Any]]:
    """The table rows of one respondent's survey conversation."""
    respondent = conversation.participants[-1].persona
    attrs = {f"attr.{k}": v for k, v in persona_attributes(respondent).items()}
    rows: list[dict[str, Any]] = []
    for record in answer_records(conversation.utterances):
        question = instrument.question(record["question_id"])
        base = {
            "respondent_id": respondent.id, "persona_name": respondent.name, **attrs,
            "question_id": question.id, "question_type": question.type, "position": record["position"],
            "question_text": record["text"], "option": None, "option_label": None, "scale_position": None, "rank": None,
            "value": record.get("value"), "raw_text": record.get("raw", ""), "status": record["status"], "mode": record["mode"],
            "option_order": "|".join(record.get("option_order") or []), "conversation_id": conversation.id,
        }
        codes = record.get("codes") or []
        if not codes:
            rows.append(base)
            continue
        for rank, code in enumerate(codes, start=1):
            option = question.option(code)
            rows.append({
                **base, "option": code, "option_label": option.label if option else code,
                "scale_position": question.position(code) if question.ordinal else None,
                "rank": rank if question.type == "ranking" else None,
            })
    return rows


def answer_table(conversations: Iterable[Conversation], instrument: Instrument) -> pd.DataFrame:
    """The tidy table of every complete conversation (attribute columns between name and question)."""
    rows = [row for c in conversations if c.status.value == "complete" for row in answer_rows(c, instrument)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    attrs = sorted(c for c in frame.columns if c.startswith("attr."))
    ordered = [*COLUMNS[:2], *attrs, *COLUMNS[2:]]
    frame = frame.reindex(columns=ordered)
    for column in ("scale_position", "rank", "position"):
        frame[column] = frame[column].astype("Int64")
    frame["value"] = frame["value"].astype("Float64")
    for column in [*attrs, "option", "option_label"]:
        frame[column] = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)).astype("string")
    return frame


def write_table(frame: pd.DataFrame, out_dir: str | os.PathLike, stem: str = "answers") -> dict[str, Path]:
    """Write ``frame`` as ``<stem>.parquet`` and ``<stem>.csv`` (each atomically); return format → path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out / f"{stem}.parquet", "csv": out / f"{stem}.csv"}
    tmp_parquet = paths["parquet"].with_suffix(".parquet.tmp")
    frame.to_parquet(tmp_parquet, index=False)
    os.replace(tmp_parquet, paths["parquet"])
    tmp_csv = paths["csv"].with_suffix(".csv.tmp")
    frame.to_csv(tmp_csv, index=False)
    os.replace(tmp_csv, paths["csv"])
    return paths


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_table` (Parquet or CSV, by extension)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, dtype={"option": "string", "option_label": "string", "respondent_id": "string"})


def responses(frame: pd.DataFrame, question_id: str, *, columns: Sequence[str] = ("respondent_id", "option")) -> pd.DataFrame:
    """The rows of one question (a convenience for analysis)."""
    return frame.loc[frame["question_id"] == question_id, list(columns)]
