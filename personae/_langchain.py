"""What the LangChain chat-model provider and the LangChain embedder share: loading a
class named by its import path, and turning a provider's exception into a
:class:`~personae.errors.ModelCallError` the gateway knows how to retry (or not).

LangChain integrations raise their SDK's own errors (``openai``, ``anthropic``,
``httpx``, ``botocore`` ...). They are read by duck typing, never imported here: an
HTTP status from ``exc.status_code`` or ``exc.response.status_code``, and timeouts
and connection failures from the names in the exception's class hierarchy.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Mapping
from typing import Any

from personae.errors import ConfigError, ModelCallError, UnsupportedFeature

__all__ = ["load_object", "build_from_path", "call_error", "model_name_of"]

_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})


def load_object(path: str, *, field: str, expected: str) -> Any:
    """The object ``path`` names: ``package.module:Name`` or ``package.module.Name``.

    Raises :class:`ConfigError` naming ``field`` when the module or the name is missing.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError("not an import path", field=field, expected=expected, got=path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} ({exc}); is its package installed?", field=field, expected=expected, got=path) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no {attr!r}", field=field, expected=expected, got=path) from None
    return obj


def build_from_path(
    path: str,
    kwargs: Mapping[str, Any] | None,
    *,
    base: type,
    what: str,
    prefix: str | None = None,
    secrets: tuple[str, ...] = (),
) -> Any:
    """An instance of ``base`` made by the class (or factory) at import ``path`` from ``kwargs``.

    Errors are :class:`ConfigError` naming ``<prefix>.class`` (not importable, or not a
    ``base``) or ``<prefix>.kwargs`` (the constructor refused its arguments); the values
    in ``secrets`` are blanked out of any message.
    """
    where = f"{prefix}." if prefix else ""
    expected = f"the import path of a {what} class, e.g. 'package.module:ClassName'"
    factory = load_object(path, field=f"{where}class", expected=expected)
    if not callable(factory):
        raise ConfigError(f"{path!r} is not a class", field=f"{where}class", expected=expected, got=type(factory).__name__)
    if isinstance(factory, type) and not issubclass(factory, base):
        raise ConfigError(f"{path!r} is not a {what}", field=f"{where}class", expected=expected, got=factory.__name__)
    try:
        obj = factory(**dict(kwargs or {}))
    except Exception as exc:  # pydantic ValidationError, TypeError ...: the integration's own words
        message = f"{path} refused its arguments: {type(exc).__name__}: {exc}"
        for secret in secrets:
            if secret:
                message = message.replace(secret, "***")
        raise ConfigError(message[:1200], field=f"{where}kwargs", expected=f"keyword arguments {path} accepts", got=sorted(dict(kwargs or {}))) from None
    if not isinstance(obj, base):
        raise ConfigError(f"{path!r} does not make a {what}", field=f"{where}class", expected=expected, got=type(obj).__name__)
    return obj


def model_name_of(obj: Any) -> str | None:
    """The model name a LangChain model declares (``model_name``, ``model`` or ``model_id``), if any."""
    for attr in ("model_name", "model", "model_id"):
        value = getattr(obj, attr, None)
        if isinstance(value, str) and value:
            return value
    return None


def api_key_of(model: Any) -> Any:
    """A LangChain model's API key (``openai_api_key``, ``anthropic_api_key``, ``api_key``...: the first
    field named so that is set), or None; only ever passed to :func:`~personae.llm.limits.key_fingerprint`."""
    for name in getattr(type(model), "model_fields", {}):
        if name == "api_key" or name.endswith("_api_key"):
            value = getattr(model, name, None)
            if value:
                return value
    return None


def base_url_of(model: Any) -> str | None:
    """The endpoint URL a LangChain model reads from its arguments (``openai_api_base``, ``base_url``), if any."""
    url = getattr(model, "openai_api_base", None) or getattr(model, "base_url", None)
    return url if isinstance(url, str) and url else None


def _status_of(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value else None
    except (TypeError, ValueError, AttributeError):
        return None


def _kind_of(exc: BaseException) -> str | None:
    """``timeout`` or ``connection`` when the exception's class hierarchy says so."""
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    names = [cls.__name__ for cls in type(exc).__mro__]
    if any("Timeout" in n for n in names):
        return "timeout"
    if isinstance(exc, ConnectionError) or any("Connect" in n for n in names):
        return "connection"
    return None


def call_error(exc: BaseException, *, model: str, what: str = "model call", structured: bool = False) -> ModelCallError:
    """``exc`` as a :class:`ModelCallError`.

    HTTP 408/409/425/429 and 5xx, timeouts and connection failures are retryable;
    with ``structured``, HTTP 400/422 is :class:`UnsupportedFeature` (the endpoint
    refused the structured-output mode, so the gateway tries the next one). Anything
    else is not retryable and is named by its class.
    """
    if isinstance(exc, ModelCallError):
        return exc
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    name = type(exc).__name__
    status = _status_of(exc)
    if status is not None:
        if structured and status in (400, 422):
            return UnsupportedFeature(f"{what} rejected the structured-output request: {name}: {detail}", status=status, model=model)
        retryable = status in _RETRYABLE_STATUS or status >= 500
        return ModelCallError(f"{what} returned HTTP {status}: {name}: {detail}", status=status, model=model, retryable=retryable, retry_after=_retry_after(exc))
    kind = _kind_of(exc)
    if kind == "timeout":
        return ModelCallError(f"{what} timed out: {name}: {detail}", model=model, retryable=True)
    if kind == "connection":
        return ModelCallError(f"{what} could not connect: {name}: {detail}", model=model, retryable=True)
    return ModelCallError(f"{what} failed: {name}: {detail}", model=model, retryable=False)
