"""Typed errors. Each says who has to act, keeps its data as attributes, and pickles.

Prefect, Dask and Ray ship exceptions between processes, so every error here
implements ``__reduce__`` with its constructor arguments.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PersonaeError",
    "ConfigError",
    "ModelOutputError",
    "ModelCallError",
    "UnsupportedFeature",
    "BudgetExceeded",
    "MissingExtra",
    "StoreLockedError",
    "WorkerProcessError",
]


class PersonaeError(Exception):
    """Base class of every error personae raises on purpose."""


class ConfigError(PersonaeError, ValueError):
    """Bad user input: a config, persona, taxonomy or quota file, or an argument.

    The message names the file, the field, what was expected and what was found.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: Any = None,
        line: int | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.expected = expected
        self.got = got
        self.line = line
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        parts = [f"{where}: {self.message}"]
        if self.field:
            parts.append(f"field: {self.field}")
        if self.expected:
            parts.append(f"expected: {self.expected}")
        if self.got is not None:
            got = repr(self.got)
            parts.append(f"got: {got[:200] + '…' if len(got) > 200 else got}")
        return "\n  ".join(parts)

    def __reduce__(self):  # noqa: D105
        return (
            _rebuild_config_error,
            (self.message, self.file, self.field, self.expected, self.got, self.line),
        )


def _rebuild_config_error(message, file, field, expected, got, line) -> ConfigError:
    return ConfigError(message, file=file, field=field, expected=expected, got=got, line=line)


class ModelOutputError(PersonaeError):
    """A model replied, but the reply could not be used (e.g. no valid JSON for the schema).

    ``raw`` keeps the model's last reply so the user can see what went wrong.
    """

    def __init__(self, message: str, *, raw: str | None = None, model: str | None = None) -> None:
        self.message = message
        self.raw = raw
        self.model = model
        snippet = "" if raw is None else f"\n  raw reply: {raw[:500]!r}"
        super().__init__(f"{message} (model: {model}){snippet}" if model else f"{message}{snippet}")

    def __reduce__(self):  # noqa: D105
        return (_rebuild_output_error, (self.message, self.raw, self.model))


def _rebuild_output_error(message, raw, model) -> ModelOutputError:
    return ModelOutputError(message, raw=raw, model=model)


class ModelCallError(PersonaeError):
    """A model call failed at the transport or provider level (HTTP status, timeout)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        model: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.model = model
        self.retryable = retryable
        self.retry_after = retry_after
        detail = ", ".join(
            f"{k}={v}" for k, v in (("status", status), ("model", model)) if v is not None
        )
        super().__init__(f"{message} ({detail})" if detail else message)

    def __reduce__(self):  # noqa: D105
        return (
            _rebuild_call_error,
            (self.message, self.status, self.model, self.retryable, self.retry_after),
        )


def _rebuild_call_error(message, status, model, retryable, retry_after) -> ModelCallError:
    return ModelCallError(
        message, status=status, model=model, retryable=retryable, retry_after=retry_after
    )


class UnsupportedFeature(ModelCallError):
    """The provider rejected a request feature (e.g. ``json_schema`` response format).

    The gateway catches it to fall back to the next structured-output strategy.
    """

    def __reduce__(self):  # noqa: D105
        return (_rebuild_unsupported, (self.message, self.status, self.model))


def _rebuild_unsupported(message, status, model) -> UnsupportedFeature:
    return UnsupportedFeature(message, status=status, model=model)


class BudgetExceeded(PersonaeError):
    """A configured limit (calls, tokens, cost) was reached."""

    def __init__(self, limit_name: str, limit: float, value: float) -> None:
        self.limit_name = limit_name
        self.limit = limit
        self.value = value
        super().__init__(f"budget exceeded: {limit_name} limit is {limit}, reached {value}")

    def __reduce__(self):  # noqa: D105
        return (BudgetExceeded, (self.limit_name, self.limit, self.value))


class MissingExtra(PersonaeError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is not installed. Install it with: pip install 'personae[{extra}]'"
        )

    def __reduce__(self):  # noqa: D105
        return (MissingExtra, (self.package, self.extra))


class StoreLockedError(PersonaeError):
    """A local store (e.g. embedded Qdrant) is already in use by another process."""

    def __init__(self, path: str, hint: str = "") -> None:
        self.path = path
        self.hint = hint
        super().__init__(
            f"{path} is in use by another process. Local stores allow one process at a time"
            + (f"; {hint}" if hint else ".")
        )

    def __reduce__(self):  # noqa: D105
        return (StoreLockedError, (self.path, self.hint))


class WorkerProcessError(PersonaeError):
    """A worker process of a batch ended without a result (killed, or crashed in the interpreter).

    What its conversations finished is written; a rerun resumes the rest from their checkpoints.
    """
