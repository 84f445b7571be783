"""The model gateway and providers. Every model call in personae goes through :class:`Gateway`."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from personae.errors import ConfigError, MissingExtra
from personae.llm.base import LLM, LLMRequest, LLMResponse, Message, ResponseFormat, Usage, estimate_tokens
from personae.llm.cache import ResponseCache
from personae.llm.gateway import Budget, Gateway, UsageTracker
from personae.llm.limits import LimitConfig, Limits
from personae.settings import Settings

__all__ = [
    "LLM",
    "LLMRequest",
    "LLMResponse",
    "Message",
    "ResponseFormat",
    "Usage",
    "estimate_tokens",
    "ResponseCache",
    "Budget",
    "Gateway",
    "UsageTracker",
    "LimitConfig",
    "Limits",
    "build_provider",
    "build_gateway",
    "LangChainLLM",
    "load_chat_model",
]

# any LangChain chat model as a provider; langchain-core loads on first use
_LAZY = {"LangChainLLM": "personae.llm.langchain_provider", "load_chat_model": "personae.llm.langchain_provider"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'personae.llm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

log = logging.getLogger(__name__)


def build_provider(settings: Settings, *, model: str | None = None, base_url: str | None = None, provider: str | None = None) -> LLM:
    """The provider ``settings`` select: an explicit ``llm_provider``, else an endpoint if one
    is configured, else the embedded local model (needs ``personae[local]``)."""
    kind = provider or settings.llm_provider
    url = base_url or settings.llm_base_url
    if kind is None:
        kind = "openai" if (url or settings.llm_api_key) else "local"
    if kind == "openai":
        from personae.llm.openai_provider import OpenAICompatibleLLM

        name = model or settings.llm_model
        if not name:
            raise ConfigError("an OpenAI-compatible endpoint needs a model name", field="llm_model", expected="PERSONAE_LLM_MODEL or llm_model in the settings file")
        return OpenAICompatibleLLM(name, base_url=url, api_key=settings.llm_api_key, timeout_s=settings.llm_timeout_s, max_connections=max(64, settings.llm_max_concurrency))
    if kind == "local":
        try:
            from personae.llm.local import LocalLlamaLLM
        except MissingExtra:
            raise
        return LocalLlamaLLM()
    if kind == "fake":
        from personae.llm.testing import FakeLLM

        return FakeLLM()
    raise ConfigError("unknown model provider", field="llm_provider", expected="openai | local | fake", got=kind)


def build_gateway(
    settings: Settings,
    *,
    models: Mapping[str, LLM] | None = None,
    roles: Mapping[str, str] | None = None,
    budget: Budget | None = None,
    model_limits: Mapping[str, LimitConfig] | None = None,
    limits: Limits | None = None,
) -> Gateway:
    """A gateway wired from ``settings``: provider, persistent cache, retries and endpoint limits.

    Every endpoint gets ``llm_max_concurrency`` calls in flight and the ``llm_rpm``/``llm_tpm``
    rates unless ``model_limits`` says otherwise; pass ``limits`` to share the budget with
    other gateways of the process (see :class:`~personae.llm.limits.Limits`)."""
    providers = dict(models) if models else {"default": build_provider(settings)}
    if "default" not in providers:
        providers["default"] = build_provider(settings)
    cache = ResponseCache(settings.cache_path) if settings.cache_enabled else None
    local = any(p.provider == "local" for p in providers.values())
    return Gateway(
        providers,
        roles=roles,
        cache=cache,
        # one in-process CPU model gains nothing from more than one call at a time
        max_concurrency=1 if local and len(providers) == 1 else settings.llm_max_concurrency,
        max_retries=settings.llm_max_retries,
        budget=budget,
        rpm=settings.llm_rpm,
        tpm=settings.llm_tpm,
        model_limits=model_limits,
        limits=limits,
    )
