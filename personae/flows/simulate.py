"""The simulate stage: the batch of conversations, sharded over Prefect tasks.

Each task owns a shard of the jobs (and is retried as a whole; a retry skips what
is done). Inside a shard, conversations run concurrently on asyncio under the
endpoint limits every shard shares (:mod:`personae.flows.limits`), and each finished conversation is appended to
``conversations.jsonl`` at once. A rerun skips conversations already in the file
and resumes half-done ones from the shard's LangGraph checkpoint.

Shards run on threads by default, in worker processes on this machine with
``simulation.processes`` (one event loop per process, one limit of calls in flight shared
by them: :mod:`personae.graphs.pool`), or on a Dask cluster with ``simulation.dask``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.task_runners import ThreadPoolTaskRunner

from personae.costs import BudgetMeter
from personae.errors import BudgetExceeded, ConfigError, MissingExtra
from personae.experiment import Experiment, SimulationConfig, build_gateway_for
from personae.flows.context import RunPaths, ShardProcess, StageResult, embedder_for, embedding_gates, open_context, open_memory, settings_in_task
from personae.flows.limits import endpoint_limit_configs, flow_limits, shard_limits
from personae.flows.progress import ProgressCallback, ProgressEvent, emit
from personae.graphs.pool import run_in_process, shard_jobs
from personae.graphs.runner import BATCH_GC_THRESHOLD, BatchResult, ConversationJob, done_ids, latest_conversations, make_jobs, simulate_batch
from personae.jsonl import read_jsonl
from personae.llm import Limits
from personae.llm.limits import LimitConfig
from personae.llm.process_limits import ProcessSlots
from personae.memory import AgentMemory
from personae.models import ConversationStatus, Persona

__all__ = ["simulate_flow", "simulate_shard", "shard_jobs", "shard_process", "task_runner_for", "done_ids"]

log = logging.getLogger(__name__)


def task_runner_for(simulation: SimulationConfig, *, processes: int = 1):
    """The task runner for the shards: threads, or Dask (a local cluster or a scheduler address).

    With ``processes`` > 1 (:meth:`Experiment.simulation_processes`) each thread runs its shard in a
    worker process, so at most ``processes`` threads run at once.
    """
    if not simulation.dask:
        return ThreadPoolTaskRunner(max_workers=processes if processes > 1 else simulation.shards)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise MissingExtra("prefect-dask", "dask") from None
    if isinstance(simulation.dask, str):
        return DaskTaskRunner(address=simulation.dask)
    workers = simulation.dask_workers or max(1, min(simulation.shards, os.cpu_count() or 1))
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})


async def _simulate_shard(
    experiment: Experiment,
    overrides: dict[str, Any],
    jobs: list[ConversationJob],
    shard: int,
    shards: int,
    progress: ProgressCallback | None = None,
    memory: AgentMemory | None = None,
    meter: BudgetMeter | None = None,
    limits: Limits | None = None,
    slots: ProcessSlots | None = None,
) -> StageResult:
    """Run one shard of conversations; returns its counts and model usage.

    With ``slots`` (the limits shared by the run's worker processes) the shard runs in a
    spawned worker process of its own (:func:`personae.graphs.pool.run_in_process`).

    ``memory`` is a shared in-process memory (thread shards on a local Qdrant);
    without it the shard opens the experiment's memory itself (a Qdrant server
    on Dask). ``limits`` are the endpoint limits shared by the shards of this process;
    without them (Dask) the shard builds its own, holding a lease on its share of Prefect's
    global limits while it runs (:func:`personae.flows.limits.shard_limits`). Jobs already
    in the output are skipped.

    With a budget ``meter`` (shared by the thread shards of a run), reaching a limit
    stops the shard cleanly: finished conversations are written, the ones in flight
    stop and keep their checkpoints (recorded neither complete nor failed), and the
    result names the limit; a rerun resumes them.
    """
    if slots is not None:
        return await run_in_process(_shard_in_process, experiment, overrides, jobs, shard, shards, meter, slots, name=f"shard-{shard}")
    if limits is None:  # a process of its own (Dask): hold a lease on the shard's share of the global limits while it runs
        async with shard_limits(experiment, settings_in_task(experiment, overrides)[0], shards=shards) as leased:
            return await _simulate_shard(experiment, overrides, jobs, shard, shards, progress, memory, meter, leased)
    settings, paths = settings_in_task(experiment, overrides)
    retry_failed = experiment.simulation.retry_failed
    already = done_ids(paths.conversations, retry_failed=retry_failed)
    skipped = sum(1 for job in jobs if job.id in already)
    meter = meter.child() if meter is not None else None
    gateway = build_gateway_for(experiment, settings, meter=meter, limits=limits)
    embedder = embedder_for(settings, gateway=gateway, meter=meter)  # semantic echo/repetition checks, and memory
    opened = None
    if memory is None and experiment.memory_enabled:
        memory, opened = open_memory(experiment, settings, embedder)
    finished = skipped
    unit = f"shard-{shard}"

    def report(done: bool = False) -> None:
        usage = gateway.usage.total()
        emit(progress, ProgressEvent(
            stage="simulate", unit=unit, done=finished, total=len(jobs), calls=usage.calls,
            model_calls=usage.model_calls, tokens=usage.prompt_tokens + usage.completion_tokens, finished=done,
        ))

    written = {"completed": 0, "failed": 0}

    def on_done(conversation: Any) -> None:
        nonlocal finished
        finished += 1
        written["completed" if conversation.status is ConversationStatus.COMPLETE else "failed"] += 1
        report()

    report()
    stop: BudgetExceeded | None = None
    try:
        result = await simulate_batch(
            jobs, gateway=gateway, out_path=paths.conversations, checkpoint_path=paths.checkpoint(shard, shards),
            embedder=embedder, memory=memory, concurrency=experiment.simulation.concurrency, on_done=on_done,
            retry_failed=retry_failed,
        )
    except BudgetExceeded as exc:  # what finished is written; conversations in flight keep their checkpoints
        log.warning("shard %d/%d: %s; stopping with %d conversation(s) written", shard + 1, shards, exc, sum(written.values()))
        stop = exc
        result = BatchResult(total=len(jobs), completed=written["completed"], failed=written["failed"], skipped=skipped, wall_s=0.0)
    finally:
        await gateway.aclose()
        if opened is not None:
            opened.close()
    report(done=True)
    metrics = {
        "conversations.jobs": result.total,
        "conversations.new": result.completed + result.failed,
        "conversations.completed_new": result.completed,
        "conversations.failed_new": result.failed,
        "conversations.skipped": result.skipped,
        "conversations.blocked_new": result.blocked,
        "shard_wall_s_sum": result.wall_s,
    }
    log.info("shard %d/%d: %s", shard + 1, shards, result)
    outcome = StageResult.of(metrics, gateway, meter=meter, stop=stop)
    outcome.processes.append(shard_process(shard))
    return outcome


def shard_process(shard: int) -> ShardProcess:
    """Where shard ``shard`` is running: this process, and its Dask worker's address when
    it runs inside one (``distributed.get_worker()``)."""
    worker = None
    try:
        from distributed import get_worker
    except ImportError:  # no Dask installed: not on a Dask worker
        pass
    else:
        try:
            worker = get_worker().address
        except ValueError:  # "No worker found": not inside a Dask worker
            pass
    return ShardProcess(shard=shard, worker=worker, hostname=socket.gethostname(), pid=os.getpid())


def _shard_in_process(
    experiment: Experiment, overrides: dict[str, Any], jobs: list[ConversationJob], shard: int, shards: int,
    meter: BudgetMeter | None, slots: ProcessSlots,
) -> StageResult:
    """A shard in a worker process (personae's own: the collector's threshold is raised for the batch)."""
    gc.set_threshold(BATCH_GC_THRESHOLD, *gc.get_threshold()[1:])
    return asyncio.run(_simulate_shard(experiment, overrides, jobs, shard, shards, None, None, meter, slots.limits()))


# The task wraps a function of another name, so Dask can pickle the function by reference.
simulate_shard = task(name="simulate-shard", cache_policy=NONE)(_simulate_shard)


@flow(name="personae-simulate", task_runner=ThreadPoolTaskRunner(max_workers=8))
def simulate_flow(
    experiment: str,
    data_dir: str | None = None,
    parent_run_id: str | None = None,
    track: bool = True,
    progress: ProgressCallback | None = None,
    budget_spent: dict[str, float] | None = None,
) -> dict[str, float]:
    """Simulate the experiment's conversations (tracked as the ``simulate`` child run).

    The pipeline runs this flow with :func:`task_runner_for` the experiment's
    ``simulation`` options (threads or Dask). ``budget_spent`` is what earlier stages of
    the run spent of the experiment's budget: thread shards share one meter of what is
    left; Dask shards (other processes) each get an equal share of it.
    """
    import time

    started = time.perf_counter()
    ctx = open_context(experiment, data_dir=data_dir, track=track)
    exp, paths = ctx.experiment, ctx.paths
    if not paths.personas.is_file():
        raise ConfigError("no personas to simulate: run the generate stage first", file=str(paths.personas), field="stages", expected="generate before simulate")
    personas = read_jsonl(paths.personas, Persona, unique="id")
    jobs = make_jobs(
        personas, exp.scenarios, exp.graph, n_conversations=exp.simulation.n_conversations, seed=exp.seed,
        sessions=exp.simulation.sessions,
    )
    workers = exp.simulation_processes()
    shards = shard_jobs(jobs, max(exp.simulation.shards, workers))
    elsewhere = bool(exp.simulation.dask) or workers > 1  # shards in other processes
    shard_task = simulate_shard.with_options(retries=exp.simulation.max_retries, retry_delay_seconds=exp.simulation.retry_delay_s)
    # one budget per endpoint: thread shards share this process's limits; Dask shards lease
    # shares of Prefect's global limits (created here, before they start) when a server is set
    limits_scope = flow_limits(exp, ctx.settings, other_processes=bool(exp.simulation.dask))
    with ctx.stage_run("simulate", parent_run_id) as run, limits_scope as limits:
        memory, opened = None, None
        # worker processes share one set of slots per endpoint, no larger than what this process leased
        slots = ProcessSlots.create(_within(endpoint_limit_configs(exp, ctx.settings), limits), processes=workers) if workers > 1 else None
        meter = ctx.meter(budget_spent)
        gates = embedding_gates(exp, ctx.settings, limits)  # the shared memory's embeddings: the shards' limits and budget
        if exp.memory_enabled and not elsewhere:
            # thread shards share one in-process memory (local Qdrant allows one client per path)
            memory, opened = open_memory(exp, ctx.settings, embedder_for(ctx.settings, gateway=gates, meter=meter))
        # callbacks and in-process memory cannot travel to Dask workers
        local_progress = None if elsewhere else progress
        # Dask workers and worker processes rebuild the settings from their own environment and cwd:
        # give them this run's data dir, resolved, so every shard writes to the same run folder
        overrides = {**ctx.overrides, "data_dir": str(ctx.settings.root)} if elsewhere else ctx.overrides
        try:
            futures = [
                shard_task.submit(exp, overrides, part, index, len(shards), local_progress, memory,
                                  _shard_meter(meter, exp, len(shards)), None if elsewhere else limits, slots)
                for index, part in enumerate(shards)
            ]
            results = []
            for future in futures:
                results.append(future.result())
                if elsewhere:
                    emit(progress, _shard_event(results[-1], len(results) - 1))
        finally:
            if opened is not None:
                opened.close()
        merged = StageResult.merge(results).with_usage(gates.usage)
        merged.metrics.update(_output_counts(paths, {job.id for job in jobs}))
        merged.metrics.update(_process_counts(merged.processes, len(shards)))
        merged.metrics["wall_s"] = time.perf_counter() - started
        metrics = ctx.log_stage(run, merged, [paths.conversations])
    log.info("simulate: %s", {k: v for k, v in metrics.items() if k.startswith("conversations.")})
    return metrics


def _within(configs: dict[str, LimitConfig], limits: Limits) -> dict[str, LimitConfig]:
    """``configs`` tightened to the limiters ``limits`` already holds (a lease of Prefect's global
    limit gives this process a share of an endpoint: its worker processes get no more)."""
    held = limits.endpoints()
    return {
        endpoint: config.tighter(LimitConfig(max_concurrency=held[endpoint].limit, rpm=held[endpoint].rpm, tpm=held[endpoint].tpm))
        if endpoint in held else config
        for endpoint, config in configs.items()
    }


def _process_counts(processes: list[ShardProcess], shards: int) -> dict[str, float]:
    """Log where each shard ran (the record's ``shard_process`` attribute holds it); count the
    processes that ran shards and the shards that ran on Dask workers."""
    for where in sorted(processes, key=lambda p: p.shard):
        log.info("shard %d/%d ran in process %d on %s%s", where.shard + 1, shards, where.pid, where.hostname,
                 f" (Dask worker {where.worker})" if where.worker else "", extra={"shard_process": where})
    return {
        "shards.processes": len({(p.hostname, p.pid) for p in processes}),
        "shards.on_dask_workers": sum(1 for p in processes if p.worker is not None),
    }


def _shard_meter(meter: BudgetMeter | None, experiment: Experiment, shards: int) -> BudgetMeter | None:
    """The meter a shard charges: the run's own for thread shards; for shards in other processes
    (Dask, worker processes: they share nothing) a meter of an equal share of what is left."""
    if meter is None or not (experiment.simulation.dask or experiment.simulation_processes() > 1):
        return meter
    return BudgetMeter.start(meter.budget.remaining(meter.spent).share(shards), meter.prices)


def _shard_event(result: StageResult, shard: int) -> ProgressEvent:
    """A finished shard's progress, reported by the flow (for shards on other processes)."""
    from personae.tracking import merge_usage

    usage = merge_usage([result.usage]).total()
    done = int(result.metrics.get("conversations.jobs", 0))
    return ProgressEvent(
        stage="simulate", unit=f"shard-{shard}", done=done, total=done, calls=usage.calls,
        model_calls=usage.model_calls, tokens=usage.prompt_tokens + usage.completion_tokens, finished=True,
    )


def _output_counts(paths: RunPaths, job_ids: set[str]) -> dict[str, float]:
    """Complete/failed conversations and utterances of this experiment's jobs in the output."""
    complete = failed = utterances = 0
    if paths.conversations.is_file():
        for conversation in latest_conversations(paths.conversations):
            if conversation.id not in job_ids:
                continue
            if conversation.status is ConversationStatus.COMPLETE:
                complete += 1
                utterances += len(conversation.utterances)
            else:
                failed += 1
    return {
        "conversations.total": len(job_ids),
        "conversations.complete": complete,
        "conversations.failed": failed,
        "utterances.total": utterances,
        "utterances.per_conversation": utterances / complete if complete else 0.0,
    }
