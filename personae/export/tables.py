"""The export's tables: personas, conversations, utterances and survey answers as flat rows with fixed schemas.

Every table has an explicit Arrow schema, so a table with no rows, or with a column
that is empty in every row, still reads back with the right types (in pyarrow and in
``datasets``). Nested values a column cannot type (persona attributes, metrics, critic
verdicts) are JSON strings.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from personae.models import Conversation, Persona

__all__ = ["TABLES", "SCHEMAS", "persona_row", "conversation_row", "utterance_rows", "survey_rows", "write_table"]

TABLES: tuple[str, ...] = ("personas", "conversations", "utterances", "survey_answers")

_STR = pa.string()
_LIST = pa.list_(pa.string())
SCHEMAS: dict[str, pa.Schema] = {
    "personas": pa.schema([
        ("id", _STR), ("name", _STR), ("age", pa.int64()), ("gender", _STR), ("location", _STR), ("occupation", _STR),
        ("education", _STR), ("description", _STR), ("speaking_style", _STR), ("social_identity", _STR),
        ("personal_identity", _STR), ("life_context", _STR), ("values", _LIST), ("beliefs", _LIST), ("goals", _LIST),
        ("linguistic_habits", _LIST), ("big_five", _STR), ("attributes", _STR),
    ]),
    "conversations": pa.schema([
        ("id", _STR), ("scenario_id", _STR), ("scenario_name", _STR), ("scenario_setting", _STR), ("graph", _STR),
        ("seed", pa.int64()), ("status", _STR), ("stop_reason", _STR), ("error", _STR), ("n_utterances", pa.int64()),
        ("participant_ids", _LIST), ("persona_ids", _LIST), ("roles", _LIST), ("flags", _LIST), ("metrics", _STR),
    ]),
    "utterances": pa.schema([
        ("id", _STR), ("conversation_id", _STR), ("turn", pa.int64()), ("speaker", _STR), ("persona_id", _STR),
        ("role", _STR), ("text", _STR), ("critic_verdict", _STR), ("critic_attempts", pa.int64()), ("flags", _LIST),
    ]),
    "survey_answers": pa.schema([
        ("id", _STR), ("conversation_id", _STR), ("respondent_id", _STR), ("persona_id", _STR), ("question_index", pa.int64()),
        ("question", _STR), ("asked", _STR), ("answer", _STR), ("extracted", _STR),
    ]),
}


def _json(value: Any) -> str | None:
    return None if value in (None, {}, []) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


Clean = Callable[[str | None], str | None]
"""What an export does to each free-text value before writing it: nothing, or mask its PII."""


def persona_row(persona: Persona, text: Clean) -> dict[str, Any]:
    """A persona as a row; ``text`` gives each free-text value as exported."""
    p = persona
    row: dict[str, Any] = {"id": p.id, "age": p.age, "big_five": _json(p.big_five.model_dump() if p.big_five else None)}
    for name in ("name", "gender", "location", "occupation", "education", "description", "speaking_style",
                 "social_identity", "personal_identity", "life_context"):
        row[name] = text(getattr(p, name))
    for name in ("values", "beliefs", "goals", "linguistic_habits"):
        row[name] = [text(v) for v in getattr(p, name)]
    row["attributes"] = text(_json(p.attributes))
    return row


def conversation_row(c: Conversation, flags: Iterable[str], text: Clean) -> dict[str, Any]:
    """A conversation as a row (its utterances are in their own table)."""
    return {
        "id": c.id, "scenario_id": c.scenario.id, "scenario_name": c.scenario.name, "scenario_setting": c.scenario.setting,
        "graph": c.metadata.get("graph"), "seed": c.metadata.get("seed"), "status": c.status.value, "stop_reason": c.stop_reason.value if c.stop_reason else None,
        "error": text(c.error), "n_utterances": len(c.utterances),
        "participant_ids": [p.id for p in c.participants], "persona_ids": [p.persona.id for p in c.participants],
        "roles": [p.role for p in c.participants], "flags": sorted(set(flags)), "metrics": _json(c.metrics),
    }


def utterance_rows(c: Conversation, text: Clean, flags: dict[str, set[str]]) -> list[dict[str, Any]]:
    """The conversation's utterances as rows; ``flags``: utterance id → the scans that found something in it."""
    seats = {p.id: p for p in c.participants}
    rows = []
    for u in c.utterances:
        seat = seats.get(u.speaker)
        verdict = u.metadata.get("critic") or {}
        rows.append({
            "id": u.id, "conversation_id": c.id, "turn": u.turn, "speaker": u.speaker,
            "persona_id": seat.persona.id if seat else None, "role": seat.role if seat else None, "text": text(u.text),
            "critic_verdict": verdict.get("verdict"), "critic_attempts": verdict.get("attempts"),
            "flags": sorted(flags.get(u.id, set())),
        })
    return rows


def survey_rows(c: Conversation, text: Clean) -> list[dict[str, Any]]:
    """An interview's question/answer pairs (``metadata["qa"]``) as rows; none for other conversations.

    The interviewer opens the interview; the respondent is the other participant. Each row
    carries the extraction's entry for its question (``metadata["extracted"]["answers"][i]``)
    as JSON when the extraction has one.
    """
    qa = c.metadata.get("qa") or []
    if not qa:
        return []
    interviewer = c.utterances[0].speaker if c.utterances else c.participants[0].id
    respondents = [p for p in c.participants if p.id != interviewer] or c.participants
    respondent = respondents[-1]
    extracted = c.metadata.get("extracted")
    per_question = extracted.get("answers") if isinstance(extracted, dict) else None
    rows = []
    for i, pair in enumerate(qa):
        row_id = f"{c.id}:q{i}"
        item = per_question[i] if isinstance(per_question, list) and i < len(per_question) else None
        rows.append({
            "id": row_id, "conversation_id": c.id, "respondent_id": respondent.id, "persona_id": respondent.persona.id,
            "question_index": i, "question": pair.get("question"), "asked": text(pair.get("asked")),
            "answer": text(pair.get("answer")), "extracted": text(_json(item)),
        })
    return rows


def write_table(folder: Path, name: str, rows: list[dict[str, Any]]) -> list[Path]:
    """Write ``rows`` as ``data/<name>.parquet`` and ``data/<name>.jsonl`` under ``folder``; return both paths."""
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
    parquet = data / f"{name}.parquet"
    pq.write_table(table, parquet)
    jsonl = data / f"{name}.jsonl"
    with jsonl.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return [parquet, jsonl]
