"""One settings object for every path and endpoint.

Values come from, in order of precedence: explicit arguments, environment variables
(``PERSONAE_*``, plus the standard ``OPENAI_API_KEY``/``OPENAI_BASE_URL``,
``MLFLOW_TRACKING_URI`` and ``PREFECT_API_URL``), a settings file
(``PERSONAE_CONFIG`` or ``./personae.yaml``), then defaults rooted at ``data_dir``.
Every storage path in personae is derived here; nothing else invents a path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from personae.costs import ModelPrice
from personae.errors import ConfigError
from personae.paths import require_writable
from personae.validation import describe_validation_error, load_data_file, validate_data

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Paths, endpoints and limits. Secrets are :class:`SecretStr` and never printed."""

    model_config = SettingsConfigDict(env_prefix="PERSONAE_", extra="forbid", validate_default=True)

    data_dir: Path = Field(Path(".personae"), description="root of every local store")

    # model endpoint (OpenAI-compatible); empty means the embedded local model
    llm_base_url: str | None = Field(None, validation_alias=AliasChoices("PERSONAE_LLM_BASE_URL", "OPENAI_BASE_URL", "llm_base_url"))
    llm_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("PERSONAE_LLM_API_KEY", "OPENAI_API_KEY", "llm_api_key"))
    llm_model: str | None = Field(None, description="model name at the endpoint")
    llm_timeout_s: float = Field(
        60.0, gt=0,
        description="seconds a model call to an HTTP endpoint may wait, to connect and then for its reply, before it "
        "fails and is retried; a call that never answers holds its conversation up to (1 + llm_max_retries) times this",
    )
    llm_max_concurrency: int = Field(
        64, ge=1, le=100_000,
        description="model calls in flight at once per endpoint, shared by every model, loop and thread (and the "
        "shards of a simulation); adapted below it on 429s and latency spikes",
    )
    llm_rpm: float | None = Field(None, gt=0, description="requests per minute per endpoint (your plan's quota); unset: none")
    llm_tpm: float | None = Field(None, gt=0, description="tokens per minute per endpoint (prompt + max_tokens, settled to the usage)")
    llm_global_limits: bool | None = Field(
        None,
        description="share the endpoint limits across processes through Prefect's global concurrency limits, each "
        "process leasing a share of them (needs a Prefect server); unset: on for simulation shards on Dask",
    )
    llm_max_retries: int = Field(5, ge=0, le=100)
    llm_provider: str | None = Field(None, description="force a provider: openai | local | fake")

    embeddings_base_url: str | None = None
    embeddings_model: str | None = None
    embeddings_provider: str | None = Field(None, description="force: openai | local | hashing | langchain")
    embeddings_class: str | None = Field(None, description="langchain: the Embeddings class, e.g. langchain_ollama:OllamaEmbeddings")
    embeddings_kwargs: dict[str, Any] | None = Field(None, description="langchain: the class's keyword arguments")
    embeddings_api_key_env: str | None = Field(None, description="langchain: NAME of the env var whose value is passed as api_key")
    embeddings_encoding_format: Literal["auto", "float", "base64"] = Field(
        "auto", description="openai: how vectors come back; auto asks for base64 and falls back to float once if refused",
    )
    embeddings_max_batch: int = Field(
        128, ge=0, le=100_000,
        description="openai: most texts per embeddings request; concurrent calls from many conversations are coalesced "
        "into requests of up to this many texts (0: no coalescing)",
    )

    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    qdrant_path_override: Path | None = Field(None, validation_alias=AliasChoices("PERSONAE_QDRANT_PATH", "qdrant_path"))

    mlflow_tracking_uri_override: str | None = Field(None, validation_alias=AliasChoices("PERSONAE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI", "mlflow_tracking_uri"))
    prefect_api_url: str | None = Field(None, validation_alias=AliasChoices("PERSONAE_PREFECT_API_URL", "PREFECT_API_URL", "prefect_api_url"))

    cache_enabled: bool = True
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="model name at the endpoint → {input_per_1m, output_per_1m}, for models the experiment gives no price",
    )

    @classmethod
    def load(cls, config_file: str | os.PathLike | None = None, **overrides: Any) -> Settings:
        """Settings from a file (explicit, ``PERSONAE_CONFIG`` or ``./personae.yaml``), env and overrides."""
        path = config_file or os.environ.get("PERSONAE_CONFIG")
        if path is None and Path("personae.yaml").exists():
            path = "personae.yaml"
        file_values: dict[str, Any] = {}
        if path is not None:
            data = load_data_file(path)
            if data is not None and not isinstance(data, dict):
                raise ConfigError("expected a mapping of settings", file=str(path), got=type(data).__name__)
            file_values = data or {}
            validate_data(_FileSettings, file_values, file=path, what="settings")
        # Environment wins over the file: only file keys the env does not set are passed in.
        env_set = {name for name in cls.model_fields if _env_has(cls, name)}
        init = {k: v for k, v in file_values.items() if k not in env_set}
        init.update(overrides)
        try:
            return cls(**init)
        except ValidationError as exc:  # a bad environment variable or override
            field, expected, got = describe_validation_error(exc)
            name = field.split(".", 1)[0]
            env = sorted(_env_names(cls, name)) if name in cls.model_fields else []
            source = next((f"environment variable {n}" for n in env if n in os.environ), None)
            raise ConfigError("invalid setting", file=source or (str(path) if path else None), field=field, expected=expected, got=got) from None

    # ---- derived paths -------------------------------------------------
    @property
    def root(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def qdrant_path(self) -> Path:
        return (self.qdrant_path_override or self.root / "qdrant").expanduser()

    @property
    def cache_path(self) -> Path:
        return self.root / "cache" / "llm.sqlite"

    @property
    def checkpoint_path(self) -> Path:
        return self.root / "checkpoints.sqlite"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri_override or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def check_data_dir(self) -> Path:
        """The data dir, if personae can create and write files there; :class:`ConfigError` otherwise.

        Commands call it before any work starts, so a data dir that is a file or sits on a
        place the process cannot write fails at once, not after model calls were spent.
        """
        return require_writable(self.root, kind="dir", field="data_dir (PERSONAE_DATA_DIR, the settings file, an experiment's data_dir or --data-dir)")

    def run_dir(self, name: str) -> Path:
        """Output directory of one experiment run."""
        return self.runs_dir / name

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to log or show: secrets replaced by whether they are set."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "set" if value.get_secret_value() else None
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        out["qdrant_path"] = str(self.qdrant_path)
        out["mlflow_tracking_uri"] = self.mlflow_tracking_uri
        out["cache_path"] = str(self.cache_path)
        out["checkpoint_path"] = str(self.checkpoint_path)
        return out


def _env_names(cls: type[Settings], name: str) -> set[str]:
    field = cls.model_fields[name]
    names = {f"PERSONAE_{name.upper()}"}
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
    return names


def _env_has(cls: type[Settings], name: str) -> bool:
    return any(n in os.environ for n in _env_names(cls, name))


class _FileSettings(Settings):
    """Validation of a settings file: the same fields, no environment."""

    model_config = SettingsConfigDict(extra="forbid")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):  # noqa: D102
        return (init_settings,)
