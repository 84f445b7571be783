"""What every stage flow needs: the loaded experiment, its settings, output paths, tracking."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from personae.embeddings import Embedder, build_embedder
from personae.costs import BudgetMeter, BudgetSpend
from personae.errors import BudgetExceeded
from personae.experiment import Experiment, budget_meter, describe_models, load_experiment, price_table, settings_for
from personae.flows.schedule import check_schedule
from personae.llm import Gateway, Limits, UsageTracker
from personae.llm.embedding_gate import EmbeddingGates
from personae.llm.limits import LimiterStats
from personae.memory import AgentMemory, QdrantHandle, open_qdrant
from personae.prompts import default_prompts
from personae.settings import Settings
from personae.tracking import Tracker, flatten, git_commit, limit_metrics, merge_usage, usage_metrics, usage_to_dict

__all__ = [
    "STAGES",
    "RunPaths",
    "StageContext",
    "StageResult",
    "ShardProcess",
    "open_context",
    "run_stage",
    "settings_in_task",
    "experiment_params",
    "write_run_config",
    "model_params",
    "run_tags",
    "open_memory",
    "embedder_for",
    "embedding_gates",
    "budget_stop_metrics",
    "budget_stop_of",
]

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("generate", "simulate", "evaluate")


@dataclass(frozen=True)
class RunPaths:
    """The files of one experiment's output folder (``Settings.run_dir(name)``)."""

    root: Path

    @property
    def personas(self) -> Path:
        return self.root / "personas.jsonl"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.jsonl"

    @property
    def population_report(self) -> Path:
        return self.root / "population_report.json"

    @property
    def conversations(self) -> Path:
        return self.root / "conversations.jsonl"

    @property
    def scorecard_json(self) -> Path:
        return self.root / "scorecard.json"

    @property
    def scorecard_html(self) -> Path:
        return self.root / "scorecard.html"

    def checkpoint(self, shard: int, shards: int) -> Path:
        """The LangGraph checkpoint database of one simulation shard."""
        return self.root / "checkpoints" / f"shard-{shard:04d}-of-{shards:04d}.sqlite"

    @property
    def conversation_metrics(self) -> Path:
        return self.root / "conversation_metrics.jsonl"

    def plots(self) -> list[Path]:
        """Every plot written to the folder or its ``plots/`` subfolder."""
        return sorted([*self.root.glob("*.png"), *self.root.glob("plots/*.png")])


class ShardProcess(BaseModel):
    """Where one shard of a stage ran: the Dask worker (if any), host and process."""

    shard: int = Field(..., ge=0, description="index of the shard")
    worker: str | None = Field(None, description="address of the Dask worker that ran it; None outside a Dask worker")
    hostname: str = Field(..., description="host name of the machine")
    pid: int = Field(..., description="id of the process that ran it")


class StageResult(BaseModel):
    """What a stage task returns, as plain data (it may cross processes): counts,
    per-role model usage, the models used, the peak of calls in flight and the limiters' figures."""

    metrics: dict[str, float] = Field(default_factory=dict)
    usage: dict[str, dict[str, float]] = Field(default_factory=dict)
    models: dict[str, str] = Field(default_factory=dict)
    peak_in_flight: int = 0
    limits: list[LimiterStats] = Field(default_factory=list, description="what the endpoint limiters saw (429s, retries, waits, AIMD window)")
    budget_stop: dict[str, Any] | None = Field(None, description="the budget limit that stopped the stage, if one did")
    processes: list[ShardProcess] = Field(default_factory=list, description="where each shard ran (a merge keeps every shard's)")

    @classmethod
    def of(
        cls, metrics: dict[str, float], gateway: Gateway | None = None, *,
        meter: BudgetMeter | None = None, stop: BudgetExceeded | None = None,
    ) -> StageResult:
        """A result with ``metrics`` and, if given, the gateway's usage and models, what was
        charged through ``meter`` (``budget.*`` metrics) and the budget ``stop``."""
        metrics = dict(metrics)
        if meter is not None:
            metrics.update(meter.own.metrics())
        budget_stop = None if stop is None else {"limit_name": stop.limit_name, "limit": stop.limit, "value": stop.value}
        if gateway is None:
            return cls(metrics=metrics, budget_stop=budget_stop)
        return cls(
            metrics=metrics, usage=usage_to_dict(gateway.usage), models=model_params(gateway),
            peak_in_flight=gateway.peak_in_flight, limits=gateway.limiter_stats(), budget_stop=budget_stop,
        )

    def with_usage(self, usage: UsageTracker) -> StageResult:
        """This result with the counters of ``usage`` added (e.g. embeddings requests made outside the gateway)."""
        return self.model_copy(update={"usage": usage_to_dict(merge_usage([self.usage, usage_to_dict(usage)]))})

    @classmethod
    def merge(cls, results: list[StageResult]) -> StageResult:
        """Shard results summed (metrics and usage add up; the peak is the largest)."""
        metrics: dict[str, float] = {}
        for result in results:
            for key, value in result.metrics.items():
                metrics[key] = metrics.get(key, 0.0) + value
        usage = merge_usage(r.usage for r in results)
        models: dict[str, str] = {}
        for result in results:
            models.update(result.models)
        return cls(
            metrics=metrics,
            usage={role: vars(counts).copy() for role, counts in usage.roles.items()},
            models=models,
            peak_in_flight=max((r.peak_in_flight for r in results), default=0),
            limits=[one for r in results for one in r.limits],  # one limiter's snapshots count once (merge_limiter_stats)
            budget_stop=next((r.budget_stop for r in results if r.budget_stop), None),
            processes=[p for r in results for p in r.processes],
        )


@dataclass
class StageContext:
    """A loaded experiment with the settings it runs under and where its outputs go.

    ``overrides`` are the settings overrides a task on another process (Dask)
    re-applies to rebuild the same settings from its own environment.
    """

    experiment: Experiment
    settings: Settings
    tracker: Tracker
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.settings.run_dir(self.experiment.name))

    def meter(self, budget_spent: dict[str, float] | None = None) -> BudgetMeter | None:
        """The meter of the experiment's budget with ``budget_spent`` (earlier stages) counted;
        ``None`` without a budget."""
        return budget_meter(self.experiment, self.settings, BudgetSpend.from_metrics(budget_spent or {}))

    def stage_metrics(self, result: StageResult) -> dict[str, float]:
        """The result's metrics plus its usage (calls, tokens, cost, latency) and the endpoint
        limiters' figures (``limits.*``: 429s, retries, waits, AIMD window)."""
        metrics = dict(result.metrics)
        metrics.update(
            usage_metrics(
                merge_usage([result.usage]),
                model_for_role=self.experiment.model_for_role,  # embeddings are priced by their own entry
                prices_per_1k=price_table(self.experiment, self.settings),
                peak_in_flight=result.peak_in_flight,
            )
        )
        metrics.update(limit_metrics(result.limits))
        return metrics

    def log_stage(self, run: Any, result: StageResult, artifacts: list[Path]) -> dict[str, float]:
        """Log a stage's models, metrics and artifacts to its run; return the metrics."""
        metrics = self.stage_metrics(result)
        metrics.update(budget_stop_metrics(result.budget_stop))
        if result.models:
            run.log_params(result.models)
        run.log_metrics(metrics)
        run.log_artifacts(artifacts)
        return metrics

    @contextmanager
    def stage_run(self, stage: str, parent_run_id: str | None) -> Iterator[Any]:
        """A tracked child run for ``stage`` (a no-op run when tracking is off)."""
        with self.tracker.run(stage, parent_run_id=parent_run_id, tags=run_tags(self.experiment, kind="stage", stage=stage)) as run:
            yield run


def run_stage(
    stage: str,
    stage_task: Any,
    experiment: str | Experiment,
    *,
    data_dir: str | None,
    parent_run_id: str | None,
    track: bool,
    progress: Any,
    artifacts: Callable[[RunPaths], list[Path]],
    plots: Callable[[Path], bool],
    budget_spent: dict[str, float] | None = None,
) -> dict[str, float]:
    """A one-task stage: run ``stage_task`` in a tracked child run, log ``artifacts`` and the
    run folder's ``plots`` (under ``plots/``); return the stage metrics.

    ``budget_spent`` is what earlier stages of the run spent of the experiment's budget
    (``budget.*`` metrics); a stage stopped by the budget says so in its metrics
    (``budget.stopped`` and the limit, see :func:`budget_stop_metrics`)."""
    ctx = open_context(experiment, data_dir=data_dir, track=track)
    meter = ctx.meter(budget_spent)
    with ctx.stage_run(stage, parent_run_id) as run:
        result = stage_task.submit(ctx.experiment, ctx.overrides, progress, meter).result()
        metrics = ctx.log_stage(run, result, artifacts(ctx.paths))
        run.log_artifacts([p for p in ctx.paths.plots() if plots(p)], artifact_path="plots")
    log.info("%s: %s", stage, ctx.paths.root)
    return metrics


def open_context(experiment: str | Experiment, *, data_dir: str | None = None, track: bool = True) -> StageContext:
    """Load ``experiment`` (a path or a loaded one), check its schedule, and build its settings and tracker."""
    loaded = experiment if isinstance(experiment, Experiment) else load_experiment(experiment)
    check_schedule(loaded)
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
    settings = settings_for(loaded, **overrides)
    tracker = Tracker(settings, loaded.name, enabled=track and loaded.tracking.enabled)
    return StageContext(experiment=loaded, settings=settings, tracker=tracker, overrides=overrides)


def settings_in_task(experiment: Experiment, overrides: dict[str, Any]) -> tuple[Settings, RunPaths]:
    """The settings and run folder a task rebuilds in its own process (same data dir and options)."""
    settings = settings_for(experiment, **overrides)
    return settings, RunPaths(settings.run_dir(experiment.name))


# ---- params and tags ----------------------------------------------------------
def experiment_params(experiment: Experiment, settings: Settings) -> dict[str, Any]:
    """Params of a pipeline run: the flattened experiment, seeds, prompt versions, settings.

    Secrets are never here (the experiment only names env vars, settings show a
    secret as set/unset), and :class:`Tracker` scrubs again before logging.
    """
    from personae import __version__

    params: dict[str, Any] = flatten(experiment.model_dump(mode="json", exclude_none=True))
    params["seed.simulation"] = experiment.seed
    if experiment.population is not None:
        params["seed.population"] = getattr(experiment.population, "seed", None)
    params["seed.evaluation"] = experiment.evaluation.judged.seed
    for name, version in default_prompts().versions().items():
        params[f"prompt_version.{name}"] = version
    for name, value in settings.public_dict().items():
        params[f"settings.{name}"] = value
    params["personae.version"] = __version__
    for name, described in describe_models(experiment, settings).items():
        params[f"model.{name}"] = described
    return params


def write_run_config(experiment: Experiment, settings: Settings, paths: RunPaths) -> Path:
    """Write ``run_config.json`` into the run folder: the experiment config, seeds, models and
    prompt versions the run was made with (what ``personae export`` puts in the dataset card).

    Every string is scrubbed of secrets as tracked params are; the file is replaced atomically.
    """
    import json
    import os
    import tempfile

    from personae import __version__
    from personae.tracking import scrub_params, secret_values

    secrets = secret_values(settings)

    def scrub(value: Any, path: str) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v, f"{path}.{i}") for i, v in enumerate(value)]
        return scrub_params({path: value}, secrets=secrets)[path] if isinstance(value, str) else value

    record = scrub({
        "experiment": experiment.model_dump(mode="json", exclude_none=True),
        "seeds": {
            "simulation": experiment.seed,
            "population": getattr(experiment.population, "seed", None) if experiment.population is not None else None,
            "evaluation": experiment.evaluation.judged.seed,
        },
        "models": describe_models(experiment, settings),
        "prompt_versions": default_prompts().versions(),
        "personae_version": __version__,
    }, "")
    paths.root.mkdir(parents=True, exist_ok=True)
    target = paths.root / "run_config.json"
    fd, tmp = tempfile.mkstemp(prefix=".run_config.", suffix=".tmp", dir=paths.root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2, ensure_ascii=False, default=str)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def model_params(gateway: Gateway) -> dict[str, str]:
    """``model.<name>`` → ``provider:model`` for every model the gateway serves."""
    return {f"model.{name}": described for name, described in gateway.describe().items()}


def run_tags(experiment: Experiment, *, kind: str, stage: str | None = None) -> dict[str, Any]:
    """Tags of a run: personae version, git commit, experiment, stage, Prefect flow run."""
    from personae import __version__

    tags: dict[str, Any] = {
        "personae.version": __version__,
        "personae.experiment": experiment.name,
        "personae.kind": kind,
        **experiment.tracking.tags,
    }
    if stage:
        tags["personae.stage"] = stage
    if experiment.source is not None:
        tags["personae.experiment_file"] = str(experiment.source)
        commit = git_commit(experiment.source)
        if commit:
            tags["git.commit"] = commit
            tags["mlflow.source.git.commit"] = commit
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags["prefect.flow_run_id"] = flow_run.id
    except Exception:  # noqa: BLE001 - outside a flow run there is no id
        pass
    return tags


# ---- shared resources ---------------------------------------------------------
def open_memory(
    experiment: Experiment,
    settings: Settings,
    embedder: Embedder,
    *,
    handle: QdrantHandle | None = None,
) -> tuple[AgentMemory | None, QdrantHandle | None]:
    """Agent memory when the experiment enables it, on ``handle`` or a newly opened Qdrant.

    Returns ``(memory, opened)``: ``opened`` is the handle this call opened (the
    caller closes it). A local Qdrant already used by another process raises
    :class:`~personae.errors.StoreLockedError` telling the user to use a server.
    """
    if not experiment.memory_enabled:
        return None, None
    opened = None
    if handle is None:
        handle = opened = open_qdrant(settings)
    memory = AgentMemory(handle, embedder, collection=experiment.memory.collection)
    return memory, opened


def embedder_for(settings: Settings, *, gateway: Gateway | EmbeddingGates | None = None, meter: BudgetMeter | None = None) -> Embedder:
    """The embedder the settings select (the experiment's ``embeddings`` applied); one that calls an
    endpoint sends its requests through ``gateway`` (limits, retries, usage) and charges ``meter``."""
    return build_embedder(settings, gateway=gateway, meter=meter)


def embedding_gates(experiment: Experiment, settings: Settings, limits: Limits | None = None) -> EmbeddingGates:
    """Where an embedder used without a gateway (a memory shared by thread shards, an evaluation
    without judges) sends its requests: ``limits`` (the flow's), a usage tracker of its own
    (add it to the stage's result with :meth:`StageResult.with_usage`), the retry policy of the
    settings, and the limits the experiment's models set on their endpoints (else the settings'
    per-endpoint limits, which :func:`build_embedder` gives)."""
    from personae.flows.limits import endpoint_limit_configs

    return EmbeddingGates(
        limits if limits is not None else Limits(), UsageTracker(),
        configs=endpoint_limit_configs(experiment, settings), max_retries=settings.llm_max_retries,
    )


# ---- budget -------------------------------------------------------------------
_LIMITS = ("max_model_calls", "max_tokens", "max_cost")


def budget_stop_metrics(stop: dict[str, Any] | None) -> dict[str, float]:
    """A budget stop as metrics (flows return plain numbers): ``budget.stopped``, which limit
    (``budget.stopped.max_tokens`` = 1), its value and what was reached."""
    if not stop:
        return {}
    return {
        "budget.stopped": 1.0,
        f"budget.stopped.{stop['limit_name']}": 1.0,
        "budget.limit": float(stop["limit"]),
        "budget.reached": float(stop["value"]),
    }


def budget_stop_of(metrics: dict[str, float]) -> BudgetExceeded | None:
    """The budget stop recorded in a stage's ``metrics`` (see :func:`budget_stop_metrics`), if any."""
    if not metrics.get("budget.stopped"):
        return None
    name = next((n for n in _LIMITS if metrics.get(f"budget.stopped.{n}")), "budget")
    limit, reached = metrics.get("budget.limit", 0.0), metrics.get("budget.reached", 0.0)
    as_int = name != "max_cost"
    return BudgetExceeded(name, int(limit) if as_int else limit, int(reached) if as_int else reached)
