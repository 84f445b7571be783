"""Any LangChain chat model (``langchain_core`` ``BaseChatModel``) as a personae provider.

LangGraph users already hold chat models for Ollama, Anthropic, vLLM, Bedrock and
the rest. :class:`LangChainLLM` puts one behind the :class:`~personae.llm.base.LLM`
protocol, so the gateway's cache, retries, limits, accounting and structured-output
fallbacks apply to it as to any provider::

    from langchain_ollama import ChatOllama
    gateway = Gateway({"default": LangChainLLM(ChatOllama(model="llama3.2"))})

What each request becomes:

- sampling (``sampling="request"``, the default): the request's ``temperature``,
  ``max_tokens`` and ``seed`` are set on a per-call copy of the chat model, each only
  where the model's class declares a field for it (``temperature``; ``max_tokens``,
  ``max_output_tokens``, ``num_predict`` or ``max_new_tokens``; ``seed`` or
  ``random_seed``), so no model receives a keyword it does not know; the rest stay
  at the model's own settings. ``stop`` is passed as ``ainvoke``'s standard ``stop``
  argument (not in ``JSON_SCHEMA`` mode, where the gateway never sets it). With ``sampling="model"`` the chat model's own settings are used as they are.
- ``TEXT`` and ``JSON_OBJECT``: a plain ``ainvoke`` (the gateway has already put the
  schema in the prompt for ``JSON_OBJECT``).
- ``JSON_SCHEMA``: ``with_structured_output(schema, method="json_schema", include_raw=True)``.
- ``TOOL``: ``bind_tools([tool], tool_choice=<name>)``; the reply text is the tool call's
  arguments as JSON.

A model that cannot do a structured mode (``NotImplementedError`` or an unsupported
argument when binding, or HTTP 400/422 from its endpoint) raises
:class:`~personae.errors.UnsupportedFeature`, so the gateway falls back to the next mode.
Token counts come from ``AIMessage.usage_metadata``, else are estimated. Provider
errors become :class:`~personae.errors.ModelCallError`: HTTP 429/5xx, timeouts and
connection failures retryable, the rest not. Retries are the gateway's job, so turn
the chat model's own off where it has them (e.g. ``ChatOpenAI(max_retries=0)``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from personae._langchain import api_key_of, base_url_of, build_from_path, call_error, model_name_of
from personae.errors import ConfigError, UnsupportedFeature
from personae.llm.base import LLMRequest, LLMResponse, Message, ResponseFormat, Usage, estimate_tokens
from personae.llm.limits import key_fingerprint

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessage, BaseMessage

__all__ = ["LangChainLLM", "load_chat_model"]

# the request's sampling parameters → the field names chat model classes give them
_SAMPLING_FIELDS: dict[str, tuple[str, ...]] = {
    "temperature": ("temperature",),
    "max_tokens": ("max_tokens", "max_output_tokens", "num_predict", "max_new_tokens"),
    "seed": ("seed", "random_seed"),
}


class LangChainLLM:
    """A LangChain chat model behind the personae provider protocol.

    Args:
        chat_model: any ``langchain_core`` ``BaseChatModel``.
        name: the model string in cache keys, usage and ``describe()``. Defaults to
            ``<llm type>/<model name>`` from the chat model (e.g.
            ``openai-chat/gpt-4o-mini``). Give differently configured models of the
            same class different names, or they share cached replies.
        sampling: ``"request"`` sets each request's temperature, max_tokens and seed on
            the model where it has such fields; ``"model"`` keeps the model's own.
    """

    provider = "langchain"

    def __init__(self, chat_model: BaseChatModel, *, name: str | None = None, sampling: Literal["request", "model"] = "request") -> None:
        from langchain_core.language_models import BaseChatModel

        if not isinstance(chat_model, BaseChatModel):
            raise ConfigError("LangChainLLM wraps a LangChain chat model", field="chat_model", expected="a langchain_core BaseChatModel", got=type(chat_model).__name__)
        if sampling not in ("request", "model"):
            raise ConfigError("unknown sampling mode", field="sampling", expected="request | model", got=sampling)
        self.chat_model = chat_model
        self.sampling = sampling
        self._model = name or _default_name(chat_model)
        self.base_url = base_url_of(chat_model)
        self.key_fingerprint = key_fingerprint(api_key_of(chat_model))
        """Tells the chat model's API key apart (for its endpoint's limits) without holding it."""
        fields = type(chat_model).model_fields
        self._fields = {param: next((f for f in names if f in fields), None) for param, names in _SAMPLING_FIELDS.items()}

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:  # the chat model's repr could show a key
        return f"LangChainLLM(model={self._model!r}, chat_model={type(self.chat_model).__name__})"

    async def aclose(self) -> None:
        """Nothing to release: the chat model belongs to the caller (its HTTP clients may be shared)."""

    # ---- the request ------------------------------------------------------------
    def _configured(self, request: LLMRequest) -> BaseChatModel:
        """The chat model with the request's sampling parameters set where it has the fields."""
        if self.sampling == "model":
            return self.chat_model
        values = {"temperature": request.temperature, "max_tokens": request.max_tokens, "seed": request.sampling_seed}
        update = {self._fields[p]: v for p, v in values.items() if v is not None and self._fields[p] is not None}
        return self.chat_model.model_copy(update=update) if update else self.chat_model

    def _runnable(self, request: LLMRequest) -> Any:
        """What to invoke for ``request``; :class:`UnsupportedFeature` if the model cannot do its format."""
        model = self._configured(request)
        fmt = request.response_format
        if fmt in (ResponseFormat.TEXT, ResponseFormat.JSON_OBJECT):
            return model
        schema = request.json_schema or {"type": "object"}
        try:
            if fmt is ResponseFormat.JSON_SCHEMA:
                return model.with_structured_output({**schema, "title": request.schema_name}, method="json_schema", include_raw=True)
            tool = {
                "type": "function",
                "function": {"name": request.schema_name, "description": f"Return the {request.schema_name} object.", "parameters": schema},
            }
            return model.bind_tools([tool], tool_choice=request.schema_name)
        except (NotImplementedError, ValueError, TypeError) as exc:
            # NotImplementedError: no bind_tools; ValueError/TypeError: an unknown method or argument
            raise UnsupportedFeature(f"{type(self.chat_model).__name__} cannot do {fmt.value}: {type(exc).__name__}: {exc}", model=self._model) from None

    async def complete(self, request: LLMRequest) -> LLMResponse:
        runnable = self._runnable(request)
        # a with_structured_output chain does not promise to hand ainvoke's keywords to the model
        stop = request.stop if request.response_format is not ResponseFormat.JSON_SCHEMA else None
        kwargs: dict[str, Any] = {"stop": list(stop)} if stop else {}
        started = time.perf_counter()
        try:
            output = await runnable.ainvoke(_to_langchain(request.messages), **kwargs)
        except Exception as exc:  # any integration's error, mapped by its status or kind
            raise call_error(exc, model=self._model, what=f"{type(self.chat_model).__name__}", structured=request.response_format is not ResponseFormat.TEXT) from None
        latency = time.perf_counter() - started
        message, text = _reply(output, request.response_format)
        return LLMResponse(
            text=text,
            usage=_usage(message, request, text),
            model=_reported_model(message) or self._model,
            provider=self.provider,
            finish_reason=_finish_reason(message),
            latency_s=latency,
        )


def load_chat_model(path: str, kwargs: Mapping[str, Any] | None = None, *, field_prefix: str | None = None, secrets: tuple[str, ...] = ()) -> BaseChatModel:
    """The chat model the class (or factory) at import ``path`` makes from ``kwargs``, e.g.
    ``load_chat_model("langchain_ollama:ChatOllama", {"model": "llama3.2"})``.

    Raises :class:`ConfigError` naming ``<field_prefix>.class`` or ``<field_prefix>.kwargs``.
    """
    from langchain_core.language_models import BaseChatModel

    return build_from_path(path, kwargs, base=BaseChatModel, what="LangChain chat model (BaseChatModel)", prefix=field_prefix, secrets=secrets)


def _default_name(chat_model: Any) -> str:
    try:
        kind = str(chat_model._llm_type)
    except Exception:  # a model without it is still a model
        kind = type(chat_model).__name__
    name = model_name_of(chat_model)
    return f"{kind}/{name}" if name else kind


def _to_langchain(messages: tuple[Message, ...]) -> list[BaseMessage]:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[m.role](content=m.content, **({"name": m.name} if m.name else {})) for m in messages]


def _reply(output: Any, fmt: ResponseFormat) -> tuple[AIMessage | None, str]:
    """The raw message and the reply text (for structured modes: the JSON the model gave)."""
    from langchain_core.messages import BaseMessage

    if isinstance(output, dict) and "raw" in output:  # with_structured_output(include_raw=True)
        message = output.get("raw")
        parsed = output.get("parsed")
        if parsed is not None:
            data = parsed.model_dump(mode="json") if hasattr(parsed, "model_dump") else parsed
            return message, json.dumps(data, ensure_ascii=False)
        return message, _message_text(message, tool=True)
    if isinstance(output, BaseMessage):
        return output, _message_text(output, tool=fmt is ResponseFormat.TOOL)
    return None, output if isinstance(output, str) else json.dumps(output, ensure_ascii=False, default=str)


def _message_text(message: Any, *, tool: bool) -> str:
    """A message's text; with ``tool``, its first tool call's arguments as JSON when it made one."""
    if message is None:
        return ""
    calls = getattr(message, "tool_calls", None) if tool else None
    if calls:
        return json.dumps(calls[0].get("args") or {}, ensure_ascii=False)
    text = getattr(message, "text", "")
    return str(text() if callable(text) and not isinstance(text, str) else text)


def _usage(message: Any, request: LLMRequest, text: str) -> Usage:
    metadata = getattr(message, "usage_metadata", None)
    if metadata:
        details = metadata.get("input_token_details") or {}
        # LangChain's usage_metadata names the provider's cached prompt tokens input_token_details.cache_read
        return Usage(prompt_tokens=metadata.get("input_tokens") or 0, completion_tokens=metadata.get("output_tokens") or 0, cached_tokens=details.get("cache_read") or 0)
    return Usage(prompt_tokens=sum(estimate_tokens(m.content) for m in request.messages), completion_tokens=estimate_tokens(text))


def _reported_model(message: Any) -> str | None:
    meta = getattr(message, "response_metadata", None) or {}
    value = meta.get("model_name") or meta.get("model")
    return value if isinstance(value, str) and value else None


def _finish_reason(message: Any) -> str | None:
    meta = getattr(message, "response_metadata", None) or {}
    value = meta.get("finish_reason") or meta.get("stop_reason") or meta.get("done_reason")
    return value if isinstance(value, str) else None
