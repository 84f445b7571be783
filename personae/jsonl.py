"""JSON Lines I/O that never leaves a torn line and reports bad records by file and line.

Appends go through one ``os.write`` per batch on an ``O_APPEND`` descriptor under an
exclusive ``flock``, so concurrent writers (threads or processes) never interleave.
A write cut short by a kill leaves at most a partial last line with no newline;
readers skip it (with a warning) and the next append truncates it first.

A last line without a newline that parses as JSON is not torn: a hand-written file
often ends that way. Readers take it as a record, and the next append adds the
missing newline before its own lines instead of cutting it off.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from personae.errors import ConfigError
from personae.validation import describe_validation_error, read_input_file

__all__ = ["append_jsonl", "append_lines", "write_json", "write_jsonl", "read_jsonl", "iter_jsonl", "read_jsonl_dicts"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def _encode(record: BaseModel | dict) -> str:
    if isinstance(record, BaseModel):
        text = record.model_dump_json()
    else:
        text = json.dumps(record, ensure_ascii=False, default=str)
    if "\n" in text:  # json never emits raw newlines, but a custom default could
        raise ValueError("a JSONL record must serialise to a single line")
    return text


def append_jsonl(path: str | os.PathLike, records: Iterable[BaseModel | dict]) -> int:
    """Append ``records`` to ``path`` atomically as one write; return how many were written."""
    return append_lines(path, [_encode(r) for r in records])


def append_lines(path: str | os.PathLike, lines: list[str]) -> int:
    """Append already encoded JSON ``lines`` (one record each, no newline inside) like :func:`append_jsonl`."""
    if any("\n" in line for line in lines):
        raise ValueError("a JSONL record must serialise to a single line")
    if not lines:
        return 0
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _drop_torn_tail(fd, path)
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return len(lines)


def _drop_torn_tail(fd: int, path: Path) -> None:
    """Before an append: end a complete last line that lacks its newline, or cut off a torn one."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    chunk = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - chunk)
        os.lseek(fd, start, os.SEEK_SET)
        block = os.read(fd, end - start)
        idx = block.rfind(b"\n")
        if idx >= 0:
            keep = start + idx + 1
            break
        end = start
    else:
        keep = 0
    os.lseek(fd, keep, os.SEEK_SET)
    if _is_complete(os.read(fd, size - keep)):
        os.write(fd, b"\n")  # O_APPEND: at the end, before the new lines
        return
    # A previous writer was killed mid-line: cut back to the last complete line.
    log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write", path, size - keep)
    os.ftruncate(fd, keep)


def _is_complete(line: bytes | str) -> bool:
    """Whether a last line without newline is a whole JSON value (written in full) rather than torn."""
    if not line.strip():
        return False
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def write_jsonl(path: str | os.PathLike, records: Iterable[BaseModel | dict]) -> int:
    """Replace ``path`` with ``records`` atomically (temp file + rename); return the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private to the writer
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(_encode(record) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    # Read it where the OS exposes it: setting it to probe is racy under threads.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def read_jsonl_dicts(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each record; a bad line raises :class:`ConfigError`."""
    path = Path(path)
    raw = read_input_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8 text", file=str(path), line=line, expected="UTF-8 encoded JSON Lines") from None
    lines = text.split("\n")
    torn = bool(lines) and lines[-1] != "" and not _is_complete(lines[-1])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if torn and number == len(lines):
            log.warning("%s:%d: skipping a torn last line (no newline) left by an interrupted write", path, number)
            return
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON ({exc.msg} at column {exc.colno})", file=str(path), line=number, expected="one JSON object per line") from None
        if not isinstance(obj, dict):
            raise ConfigError("expected a JSON object", file=str(path), line=number, expected="object", got=type(obj).__name__)
        yield number, obj


def iter_jsonl(path: str | os.PathLike, model: type[M], *, unique: str | None = None) -> Iterator[M]:
    """Yield each line of ``path`` validated as ``model``; errors name file, line and field.

    With ``unique`` (a field name, e.g. ``"id"``), a record repeating an earlier record's
    value of that field raises :class:`ConfigError` naming both lines.
    """
    seen: dict[object, int] = {}
    for number, obj in read_jsonl_dicts(path):
        try:
            record = model.model_validate(obj)
        except ValidationError as exc:
            field, expected, got = describe_validation_error(exc)
            raise ConfigError(f"invalid {model.__name__} record", file=str(path), line=number, field=field, expected=expected, got=got) from None
        if unique is not None:
            value = getattr(record, unique)
            first = seen.setdefault(value, number)
            if first != number:
                raise ConfigError(
                    f"duplicate {unique}: line {first} has the same {unique}", file=str(path), line=number, field=unique,
                    expected=f"a distinct {unique} on every line (a {unique} derived from the content repeats when a record is repeated)",
                    got=value,
                )
        yield record


def read_jsonl(path: str | os.PathLike, model: type[M], *, unique: str | None = None) -> list[M]:
    """All records of ``path`` validated as ``model`` (``unique``: see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path, model, unique=unique))
