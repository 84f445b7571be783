"""Turning pydantic errors and raw files into one readable :class:`ConfigError`."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from personae.errors import ConfigError

__all__ = ["describe_validation_error", "load_data_file", "load_model_file", "read_input_file", "read_text_file", "validate_data"]

M = TypeVar("M", bound=BaseModel)

MAX_FILE_BYTES = 50 * 1024 * 1024
_MAX_YAML_NODES = 200_000


def describe_validation_error(exc: ValidationError) -> tuple[str, str, Any]:
    """The first error as ``(dotted field path, what was expected, what was given)``."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
    kind = err.get("type", "")
    msg = err.get("msg", "invalid value")
    if kind == "extra_forbidden":
        msg = "no such field (unknown key)"
    elif kind == "missing":
        msg = "a value (this field is required)"
    count = exc.error_count()
    if count > 1:
        msg += f" [+{count - 1} more error{'s' if count > 2 else ''}]"
    return field, msg, _redact(err.get("input")) if kind != "missing" else None


_SECRET_KEYS = re.compile(r"(^|[_-])(api_?key|apikey|key|token|secret|password|passwd|credentials?|authorization)$", re.IGNORECASE)


def _redact(value: Any) -> Any:
    """``value`` with secret-named mapping entries masked, so an error never echoes a key."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and _SECRET_KEYS.search(k) and v else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def validate_data(model: type[M], data: Any, *, file: str | os.PathLike | None = None, what: str | None = None) -> M:
    """Validate ``data`` as ``model``, raising :class:`ConfigError` naming file and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, expected, got = describe_validation_error(exc)
        raise ConfigError(f"invalid {what or model.__name__}", file=None if file is None else str(file), field=field, expected=expected, got=got) from None


class _BoundedLoader(yaml.SafeLoader):
    """Safe YAML loader that refuses alias bombs (billion laughs) and duplicate mapping keys.

    A repeated key is an error (YAML requires unique keys; PyYAML would keep the last
    value without a word). Keys brought in by a merge (``<<: *base``) may be overridden.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._nodes = 0
        self._checked: set[int] = set()

    def construct_document(self, node):  # count expanded nodes, aliases included; check keys
        self._count(node, set())
        return super().construct_document(node)

    def _reject_duplicate_keys(self, node: yaml.MappingNode) -> None:
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1

    def _count(self, node, stack):
        self._nodes += 1
        if self._nodes > _MAX_YAML_NODES:
            raise yaml.YAMLError(f"document expands to more than {_MAX_YAML_NODES} nodes (alias bomb?)")
        if id(node) in stack:
            return
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            self._reject_duplicate_keys(node)
            children = [x for kv in node.value for x in kv]
        if children:
            stack = stack | {id(node)}
            for child in children:
                self._count(child, stack)


def read_input_file(path: str | os.PathLike, *, max_bytes: int | None = None) -> bytes:
    """The bytes of an input file, or a :class:`ConfigError` naming it: missing, a directory,
    a broken symlink or symlink loop, unreadable, or larger than ``max_bytes``."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        problem = "is a broken symlink" if path.is_symlink() else "file not found"
        raise ConfigError(problem, file=str(path)) from None
    except OSError as exc:  # a symlink loop, a path below a regular file, no permission
        raise ConfigError(f"cannot read the file ({exc.strerror})", file=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError("is a directory, expected a file", file=str(path))
    if max_bytes is not None and info.st_size > max_bytes:
        raise ConfigError("file too large", file=str(path), expected=f"at most {max_bytes} bytes", got=info.st_size)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the file ({exc.strerror})", file=str(path)) from None


def read_text_file(path: str | os.PathLike, *, expected: str = "a YAML or JSON document") -> str:
    """The text of a UTF-8 file, with clear errors for a missing, huge, binary or empty file."""
    path = Path(path)
    raw = read_input_file(path, max_bytes=MAX_FILE_BYTES)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError("not valid UTF-8 text", file=str(path), line=line, expected="a UTF-8 encoded file") from None
    if not text.strip():
        raise ConfigError("file is empty", file=str(path), expected=expected)
    return text


def load_data_file(path: str | os.PathLike) -> Any:
    """Read a YAML or JSON file (by extension; YAML otherwise) with clear errors."""
    path = Path(path)
    text = read_text_file(path)
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON: {exc.msg}", file=str(path), line=exc.lineno) from None
        except _DuplicateKey as exc:
            raise ConfigError(f"duplicate key {exc.key!r} in a JSON object", file=str(path), field=exc.key, expected="each key once per object") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", file=str(path), line=line) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object from its pairs, refusing a repeated key (``json`` keeps the last one)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def load_model_file(path: str | os.PathLike, model: type[M], *, what: str | None = None) -> M:
    """Load and validate a YAML/JSON file as ``model``."""
    data = load_data_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level of the {what or model.__name__} file", file=str(path), expected="mapping", got=type(data).__name__)
    return validate_data(model, data, file=path, what=what)
