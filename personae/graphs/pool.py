"""A batch on every core: shards of a batch in worker processes, one event loop each.

One batch on one asyncio event loop is bounded by that process's CPU (one GIL): each model
call costs the client a few milliseconds of CPU, so past a few hundred calls per second
more calls in flight no longer overlap (bench/overlap.py). Spreading the batch's shards
over worker processes puts one event loop on each core.

* Workers are started with the **spawn** method: a fork of a process that already ran
  Prefect flows (threads, open clients) inherits their state, and such children can exit
  with 1. A spawned worker imports personae afresh.
* **One limit:** the calls in flight of every endpoint are shared through one semaphore
  per endpoint, and the request and token rates are split
  (:class:`~personae.llm.process_limits.ProcessSlots`).
* **Appends:** each worker appends its finished conversations to the one output file;
  :func:`personae.jsonl.append_jsonl` writes a batch as one ``O_APPEND`` write under an
  exclusive ``flock``, so lines from different processes never interleave.
* **Checkpoints:** each worker checkpoints its part of the jobs to its own SQLite file
  (``<name>.part-I-of-K<suffix>``). Jobs are split by :func:`shard_jobs`, which depends only
  on the job list and K, so a rerun with the same K finds each half-done conversation's
  checkpoint; with another K it reruns such conversations from their start (nothing is lost).
* **The garbage collector:** workers are processes personae owns, so each runs its batch
  with the cyclic collector's young-generation threshold raised to
  :data:`~personae.graphs.runner.BATCH_GC_THRESHOLD`; the calling process's setting is
  never touched.
* **A killed worker** leaves what it wrote and its checkpoints; the other workers finish
  their parts, then the batch raises :class:`~personae.errors.WorkerProcessError`, and a
  rerun resumes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

from personae.errors import ConfigError, PersonaeError, WorkerProcessError
from personae.llm.gateway import Gateway, RoleUsage
from personae.llm.limits import Limits
from personae.llm.process_limits import ProcessSlots

__all__ = ["AUTO_JOBS_PER_PROCESS", "Processes", "shard_jobs", "resolve_processes", "available_cores", "part_path", "run_in_process"]

log = logging.getLogger(__name__)

Processes = int | Literal["auto"]
"""How many worker processes a batch uses: a number (1 = the calling process only) or ``"auto"``."""

AUTO_JOBS_PER_PROCESS = 500
"""With ``processes="auto"``, one worker process per this many conversations left to run, up to the cores.

A spawned worker costs about a second of CPU to import personae and its graph libraries (10–14 s
of wall time on a heavily loaded 2-core machine, bench/scaling.py), and 500 ten-turn conversations
are about 6 s of one core's client CPU (≈ 1.3 ms per call); below ``2 × AUTO_JOBS_PER_PROCESS``
conversations a batch stays in the calling process."""


def shard_jobs(jobs: Sequence[Any], shards: int) -> list[list[Any]]:
    """Split ``jobs`` round-robin into at most ``shards`` non-empty shards (deterministic).

    The sessions of one group stay in one shard (a later session waits for the one before
    it); groups, and jobs without one, are dealt round-robin in order of first appearance.
    """
    units: dict[str, list[Any]] = {}
    for job in jobs:
        units.setdefault(job.group or job.id, []).append(job)
    shards = max(1, min(shards, len(units)))
    order = {key: index % shards for index, key in enumerate(units)}
    return [[job for job in jobs if order[job.group or job.id] == i] for i in range(shards)]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_processes(setting: Processes, jobs: int, *, cores: int | None = None) -> int:
    """The number of worker processes for ``jobs`` conversations left to run.

    A number is taken as given (never more processes than jobs); ``"auto"`` is one process per
    :data:`AUTO_JOBS_PER_PROCESS` conversations, up to the available cores, so a small batch
    stays in the calling process.
    """
    if setting == "auto":
        cores = available_cores() if cores is None else cores
        return max(1, min(cores, jobs // AUTO_JOBS_PER_PROCESS))
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise ConfigError("processes must be a whole number of at least 1, or 'auto'", field="processes",
                          expected="an int >= 1 or 'auto'", got=setting)
    return max(1, min(setting, jobs))


def part_path(path: Path, index: int, parts: int) -> Path:
    """The file of part ``index`` of ``parts`` beside ``path`` (e.g. one checkpoint database per worker)."""
    return path.with_name(f"{path.stem}.part-{index:04d}-of-{parts:04d}{path.suffix}")


# ---- one worker process --------------------------------------------------------------------------

def _child(conn: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """The worker's entry point: run ``target(*args)`` and send back ``("ok", result)`` or ``("error", exc)``."""
    try:
        message: tuple[str, Any] = ("ok", target(*args))
    except BaseException as exc:  # noqa: BLE001 - shipped to the parent, which raises it
        message = ("error", exc)
    try:
        conn.send(message)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an unpicklable result or error
        conn.send(("error", PersonaeError(f"{message[0]}: {message[1]!r} (could not be sent to the parent: {exc})")))
    finally:
        conn.close()


def _collect(proc: Any, conn: Connection) -> tuple[str, Any] | None:
    """Block until the worker sent its message or ended; the message, or ``None`` when it ended without one."""
    message = None
    wait([conn, proc.sentinel])
    try:
        if conn.poll():
            message = conn.recv()
    except (EOFError, OSError):
        message = None
    finally:
        conn.close()
    proc.join()
    return message


def _died(name: str, exitcode: int | None) -> WorkerProcessError:
    how = f"was killed by signal {signal.Signals(-exitcode).name}" if exitcode is not None and exitcode < 0 else f"exited with {exitcode}"
    return WorkerProcessError(
        f"worker process {name} {how} before it finished: the conversations it finished are written, the ones in flight "
        "keep their checkpoints; rerun the batch to resume them"
    )


async def run_in_process(target: Callable[..., Any], *args: Any, name: str) -> Any:
    """Run ``target(*args)`` in a new spawned process and return its result (or raise its error).

    ``target`` and ``args`` must pickle (a module-level function; multiprocessing semaphores
    such as :class:`~personae.llm.process_limits.ProcessSlots` cross only this way). A worker
    that dies without a result raises :class:`~personae.errors.WorkerProcessError`; cancelling
    the call terminates the worker.
    """
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    proc = context.Process(target=_child, args=(child, target, args), name=name, daemon=False)
    try:
        proc.start()
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        parent.close()
        raise ConfigError(
            f"what a worker process needs could not be sent to it ({exc})", field="processes",
            expected="picklable arguments: module-level functions (or functools.partial of them) and plain data",
        ) from None
    finally:
        child.close()
    log.debug("started worker process %s (pid %s)", name, proc.pid)
    executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"wait-{name}")
    try:
        message = await asyncio.get_running_loop().run_in_executor(executor, _collect, proc, parent)
    except BaseException:
        if proc.is_alive():
            proc.terminate()
        raise
    finally:
        executor.shutdown(wait=False)
    if message is None:
        raise _died(name, proc.exitcode)
    kind, value = message
    if kind == "error":
        raise value
    return value


# ---- a batch over worker processes ------------------------------------------------------------------

def _batch_worker(
    index: int,
    parts: int,
    jobs: list[Any],
    slots: ProcessSlots,
    gateway_factory: Callable[[Limits], Gateway],
    options: dict[str, Any],
) -> tuple[Any, dict[str, RoleUsage], float]:
    """In a worker process: run one part of a batch; returns its result, usage and CPU seconds."""
    from personae.graphs.runner import BATCH_GC_THRESHOLD, simulate_batch

    gc.set_threshold(BATCH_GC_THRESHOLD, *gc.get_threshold()[1:])  # this process is personae's own
    checkpoint = options.get("checkpoint_path")
    if checkpoint is not None:
        options = {**options, "checkpoint_path": part_path(Path(checkpoint), index, parts)}
    gateway = gateway_factory(slots.limits())
    cpu = time.process_time()

    async def run() -> Any:
        try:
            return await simulate_batch(jobs, gateway=gateway, **options)
        finally:
            await gateway.aclose()

    result = asyncio.run(run())
    return result, dict(gateway.usage.roles), time.process_time() - cpu


async def simulate_in_processes(
    jobs: Sequence[Any],
    *,
    processes: int,
    gateway: Gateway,
    gateway_factory: Callable[[Limits], Gateway],
    options: dict[str, Any],
) -> Any:
    """Run ``jobs`` as ``processes`` parts in worker processes (see the module docs); the merged result.

    ``gateway`` is the caller's: its endpoints' limits become the shared ones, and the
    workers' usage is added to its counters. ``options`` are :func:`~personae.graphs.runner.simulate_batch`'s.
    """
    from personae.graphs.runner import BatchResult

    started = time.perf_counter()
    configs = {key: limiter.config for key, limiter in gateway.limits.endpoints().items()}
    parts = shard_jobs(list(jobs), processes)
    slots = ProcessSlots.create(configs, processes=len(parts))
    log.info("batch of %d conversations over %d worker processes (one event loop each)", len(jobs), len(parts))
    outcomes = await asyncio.gather(
        *(run_in_process(_batch_worker, i, len(parts), part, slots, gateway_factory, options, name=f"batch-part-{i}")
          for i, part in enumerate(parts)),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    for _, usage, _ in done:
        gateway.usage.add(usage)
    if errors:
        for extra in errors[1:]:
            log.error("another worker process failed too: %s: %s", type(extra).__name__, extra)
        raise errors[0]
    results = [r for r, _, _ in done]
    return BatchResult(
        total=len(jobs), completed=sum(r.completed for r in results), failed=sum(r.failed for r in results),
        skipped=sum(r.skipped for r in results), wall_s=time.perf_counter() - started,
        failed_before=sum(r.failed_before for r in results), blocked=sum(r.blocked for r in results),
        processes=len(parts), worker_cpu_s=sum(cpu for _, _, cpu in done),
        startup_s=max(0.0, time.perf_counter() - started - max(r.wall_s for r in results)),
    )
