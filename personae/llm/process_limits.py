"""Endpoint limits shared by the worker processes of one batch on one machine.

A batch spread over ``k`` worker processes (:mod:`personae.graphs.pool`) keeps one budget
per endpoint:

* **calls in flight** are truly shared: the parent creates one semaphore per endpoint
  (``multiprocessing``'s spawn context, a POSIX semaphore in shared memory) holding the
  endpoint's ``max_concurrency`` slots and hands it to every worker. A worker's calls hold
  a slot of it for as long as they are in flight (:class:`ProcessSlots` is the
  :class:`~personae.llm.limits.SharedLimiter` of the worker's :class:`~personae.llm.limits.Limits`),
  so the total in flight across the processes never exceeds the limit, however the work
  is spread: a worker that finishes early leaves its slots to the others. Taking a free
  slot is one non-blocking ``sem_trywait``; a call that finds none waits on a future of
  its own event loop, which one helper thread per endpoint and process resolves when a
  slot frees up (so a thousand waiting calls do not hold a thousand threads).
* **requests and tokens per minute** are split: each worker's buckets get ``1/k`` of the
  rate (and of the burst), so their sum is the endpoint's rate. A rate split is never
  exceeded in total, needs no round trip per call, and costs little: a worker's calls are
  spread evenly over time, unlike slots, which free up in bursts.

Each worker keeps its own AIMD window (a 429 narrows the window of the worker that saw it).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

from personae.errors import ConfigError
from personae.llm.limits import LimitConfig, Limits

__all__ = ["ProcessSlots", "split_rates"]

log = logging.getLogger(__name__)


def split_rates(config: LimitConfig, parts: int) -> LimitConfig:
    """``config`` with its requests and tokens per minute divided among ``parts`` processes."""
    if parts < 1:
        raise ConfigError("processes must be at least 1", field="processes", got=parts)
    if parts == 1:
        return config
    return config.model_copy(update={
        "rpm": config.rpm / parts if config.rpm else None,
        "tpm": config.tpm / parts if config.tpm else None,
    })


class _Gate:
    """One endpoint's shared semaphore, as seen from one process: async acquire, FIFO waiters."""

    def __init__(self, semaphore: Any) -> None:
        self.semaphore = semaphore
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self._helper: threading.Thread | None = None

    async def acquire(self) -> None:
        with self._lock:
            if not self._waiters and self.semaphore.acquire(False):
                return
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
            if self._helper is None:
                self._helper = threading.Thread(target=self._hand_out, name="personae-process-slots", daemon=True)
                self._helper.start()
        try:
            await future
        except BaseException:
            with self._lock:
                queued = (loop, future) in self._waiters
                if queued:
                    self._waiters.remove((loop, future))
            if not queued and future.done() and not future.cancelled():
                self.semaphore.release()  # the slot arrived as we were cancelled: give it back
            raise  # (not handed over yet: _grant sees the cancelled future and gives the slot back)

    def release(self) -> None:
        self.semaphore.release()

    def _hand_out(self) -> None:
        """Helper thread: while calls wait, take each freed slot and hand it to the first of them."""
        while True:
            with self._lock:
                if not self._waiters:
                    self._helper = None
                    return
            if not self.semaphore.acquire(True, 0.05):  # a timeout so the thread notices when nobody waits
                continue
            with self._lock:
                waiter = self._waiters.popleft() if self._waiters else None
            if waiter is None:
                self.semaphore.release()
                continue
            loop, future = waiter
            try:
                loop.call_soon_threadsafe(self._grant, future)
            except RuntimeError:  # its loop is closed: nobody waits there any more
                self.semaphore.release()

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled meanwhile
            self.semaphore.release()
        else:
            future.set_result(None)


class ProcessSlots:
    """Calls in flight per endpoint, shared by processes on one machine (see the module docs).

    Create it in the parent with :meth:`create` and pass it to each worker process as an
    argument of the spawned process (``multiprocessing`` semaphores cross a spawn that way
    only); the worker builds its limits with :meth:`limits`.
    """

    def __init__(self, semaphores: Mapping[str, Any], configs: Mapping[str, LimitConfig], processes: int) -> None:
        self.semaphores = dict(semaphores)
        self.configs = dict(configs)
        self.processes = processes
        self._gates: dict[str, _Gate] = {}
        self._gates_lock = threading.Lock()
        self._warned: set[str] = set()

    @classmethod
    def create(cls, configs: Mapping[str, LimitConfig], *, processes: int) -> ProcessSlots:
        """One semaphore of ``max_concurrency`` slots per endpoint of ``configs``."""
        context = multiprocessing.get_context("spawn")
        return cls({key: context.BoundedSemaphore(c.max_concurrency) for key, c in configs.items()}, configs, processes)

    def __getstate__(self) -> dict[str, Any]:
        return {"semaphores": self.semaphores, "configs": self.configs, "processes": self.processes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["semaphores"], state["configs"], state["processes"])  # type: ignore[misc]

    def limits(self) -> Limits:
        """A worker's limits: this shared limiter, and each endpoint's rates split among the processes."""
        limits = Limits(shared=self)
        for key, config in self.configs.items():
            limits.limiter(key, split_rates(config, self.processes))
        return limits

    def slot(self, endpoint: str) -> AbstractAsyncContextManager[Any]:
        """Hold one of ``endpoint``'s shared slots while the ``async with`` runs."""
        if endpoint not in self.semaphores:
            if endpoint not in self._warned:
                self._warned.add(endpoint)
                log.warning("endpoint %s has no limit shared between processes (not known when the pool started): "
                            "its calls are limited per process", endpoint)
            return nullcontext()
        return self._held(self._gate(endpoint))

    def _gate(self, endpoint: str) -> _Gate:
        with self._gates_lock:
            gate = self._gates.get(endpoint)
            if gate is None:
                gate = self._gates[endpoint] = _Gate(self.semaphores[endpoint])
            return gate

    @staticmethod
    @asynccontextmanager
    async def _held(gate: _Gate) -> AsyncIterator[None]:
        await gate.acquire()
        try:
            yield
        finally:
            gate.release()

    async def admit(self, endpoint: str, *, tokens: int) -> None:
        """Rates are split among the processes (each worker's own buckets), so nothing to wait for here."""
        return None
