"""Coalescing embedding calls from many conversations into few requests (a micro-batcher).

Memory observe/retrieve, critic risk signals, termination and echo checks each embed
a text or two per turn. With many conversations on one event loop those calls arrive
together; sent one by one they cost one HTTP request each. :class:`BatchingEmbedder`
wraps any embedder: an :meth:`~BatchingEmbedder.aembed` call joins a queue, and a
flush, one event-loop tick later (or ``window_s``), sends the queued texts as one
call of the wrapped embedder. Calls arriving while a batch is in flight join the next
batch; a new batch starts beside one in flight only once ``max_batch`` texts wait.

Each caller gets exactly the rows it asked for, identical to an unbatched call
(rows are L2-normalised one by one, so neighbours in a batch change nothing). An
error of the wrapped call is raised in every caller of that batch. A caller that is
cancelled before its batch is sent is left out of it; a batch whose callers were all
cancelled is cancelled too.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from personae.embeddings.base import Embedder

__all__ = ["BatchingEmbedder", "BatchStats"]


@dataclass
class BatchStats:
    """What the batcher received and what it sent."""

    calls: int = 0
    """:meth:`BatchingEmbedder.aembed` calls (each from one caller)."""
    texts: int = 0
    """Texts those calls asked for."""
    batches: int = 0
    """Calls of the wrapped embedder (one request each, unless a batch exceeds its request size)."""
    inputs: int = 0
    """Texts sent in those batches (repeats within a batch are sent once)."""
    largest_batch: int = 0


@dataclass
class _Waiter:
    texts: list[str]
    future: asyncio.Future[np.ndarray]


@dataclass
class _LoopQueue:
    """The batcher's state on one event loop (futures and tasks are bound to their loop)."""

    pending: deque[_Waiter] = field(default_factory=deque)
    pending_texts: int = 0
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    flusher: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class BatchingEmbedder:
    """An embedder whose concurrent :meth:`aembed` calls share requests.

    Args:
        inner: the embedder that does the work (e.g. an
            :class:`~personae.embeddings.openai.OpenAIEmbedder`).
        max_batch: most texts in one batch; give the endpoint's limit of inputs per
            request (a caller asking for more texts than this gets a batch of its own).
        window_s: how long a flush waits for more callers; ``0`` waits one event-loop
            tick, which already gathers every conversation ready to embed at that moment.
        max_in_flight: most batches in flight at once (a new one starts beside others
            only when ``max_batch`` texts are waiting).

    :meth:`embed` (sync) passes straight through. :attr:`stats` counts calls and batches.
    """

    DEFAULT_WINDOW_S = 0.002

    def __init__(self, inner: Embedder, *, max_batch: int = 128, window_s: float = DEFAULT_WINDOW_S, max_in_flight: int = 4) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError(f"max_batch and max_in_flight must be >= 1, got {max_batch} and {max_in_flight}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self.inner = inner
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_in_flight = max_in_flight
        self.stats = BatchStats()
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # guards _queues and stats across loops in threads

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def __repr__(self) -> str:
        return f"BatchingEmbedder({self.inner!r}, max_batch={self.max_batch})"

    def close(self) -> None:
        """Close the wrapped embedder's sync client, if it has one."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    async def aclose(self) -> None:
        """Close the wrapped embedder's async client for the running loop, if it has one."""
        aclose = getattr(self.inner, "aclose", None)
        if callable(aclose):
            await aclose()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The wrapped embedder's :meth:`embed` (nothing to coalesce without an event loop)."""
        return self.inner.embed(texts)

    async def aembed(self, texts: Sequence[str]) -> np.ndarray:
        """Rows for ``texts``, from a batch shared with concurrent callers on this event loop."""
        if isinstance(texts, str):
            raise TypeError("aembed() takes a sequence of texts, not one string")
        items = list(texts)
        if not items:
            return await self.inner.aembed([])
        loop = asyncio.get_running_loop()
        queue = self._queue(loop)
        waiter = _Waiter(items, loop.create_future())
        queue.pending.append(waiter)
        queue.pending_texts += len(items)
        with self._lock:
            self.stats.calls += 1
            self.stats.texts += len(items)
        if queue.flusher is None or queue.flusher.done():
            queue.flusher = loop.create_task(self._flush(queue), name="personae-embed-batcher")
        queue.wake.set()
        return await waiter.future

    # ---- the flush loop (one task per event loop while calls wait) ----------------
    def _queue(self, loop: asyncio.AbstractEventLoop) -> _LoopQueue:
        with self._lock:
            queue = self._queues.get(loop)
            if queue is None:
                queue = self._queues[loop] = _LoopQueue()
            return queue

    async def _flush(self, queue: _LoopQueue) -> None:
        await asyncio.sleep(self.window_s)  # let every caller ready now join
        while queue.pending:
            startable = len(queue.in_flight) < self.max_in_flight and (not queue.in_flight or queue.pending_texts >= self.max_batch)
            if startable:
                waiters = self._take(queue)
                if waiters:
                    task = asyncio.get_running_loop().create_task(self._send(waiters))
                    queue.in_flight.add(task)
                    task.add_done_callback(lambda t: (queue.in_flight.discard(t), queue.wake.set()))
                continue
            queue.wake.clear()
            await queue.wake.wait()  # a batch finished, or more texts arrived
            if not queue.in_flight:
                await asyncio.sleep(self.window_s)  # a fresh batch: gather again

    def _take(self, queue: _LoopQueue) -> list[_Waiter]:
        """Waiters for the next batch, whole, up to ``max_batch`` texts (at least one waiter)."""
        taken: list[_Waiter] = []
        size = 0
        while queue.pending:
            head = queue.pending[0]
            if head.future.done():  # cancelled while waiting
                queue.pending.popleft()
                queue.pending_texts -= len(head.texts)
                continue
            if taken and size + len(head.texts) > self.max_batch:
                break
            queue.pending.popleft()
            queue.pending_texts -= len(head.texts)
            taken.append(head)
            size += len(head.texts)
        return taken

    async def _send(self, waiters: list[_Waiter]) -> None:
        unique = list(dict.fromkeys(t for w in waiters for t in w.texts))
        with self._lock:
            self.stats.batches += 1
            self.stats.inputs += len(unique)
            self.stats.largest_batch = max(self.stats.largest_batch, len(unique))
        call = asyncio.ensure_future(self.inner.aembed(unique))
        watch = [w.future for w in waiters]
        try:
            while not call.done():
                await asyncio.wait([call, *watch], return_when=asyncio.FIRST_COMPLETED)
                watch = [f for f in watch if not f.done()]
                if not watch and not call.done():  # every caller gave up
                    call.cancel()
                    await asyncio.gather(call, return_exceptions=True)
                    return
            vectors = call.result()
        except asyncio.CancelledError:  # the batcher itself was cancelled (loop shutting down)
            call.cancel()
            for w in waiters:
                w.future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
            for w in waiters:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        rows = {text: i for i, text in enumerate(unique)}
        for w in waiters:
            if not w.future.done():
                w.future.set_result(vectors[[rows[t] for t in w.texts]])
