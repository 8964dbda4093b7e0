"""Dynamic batching across requests: one ``Batcher`` per model, in every request's path.

Each image is queued as its own item carrying its own future, so a request with many images may be
split across batches and is reassembled in order by awaiting its futures. Every model instance has a
worker task that takes whatever is queued (up to ``max_batch_size``) the moment it is free: an idle
server starts work at once, a busy one forms bigger batches. ``max_queue_delay`` optionally waits a
little longer for a fuller batch. Cancelled or expired items are dropped before the model runs.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np

from serve.errors import InvalidArgument, ResourceExhausted, ServerUnavailable, TorchgrpcError

__all__ = ["BatchError", "Batcher", "BatchingConfig", "DeadlineExpired"]

log = logging.getLogger(__name__)

RunBatch = Callable[[np.ndarray], np.ndarray]


class DeadlineExpired(TorchgrpcError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class BatchError(TorchgrpcError):
    """The model failed on a batch; every request in it gets this, the server goes on."""


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 16
    max_queue_delay: float = 0.0
    max_queue_size: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_queue_delay < 0:
            raise ValueError("max_queue_delay must be >= 0")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size must be >= 1")


@dataclass(eq=False)
class _Item:
    array: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float | None = None
    # Still in the queue (not yet taken by a worker nor dropped)?
    queued: bool = True

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass
class BatcherStats:
    batches: int = 0
    images: int = 0
    dropped: int = 0
    # Batches run on the solo instance,
    solo: int = 0
    # and of those, the ones prepared there too (run_alone).
    one_hop: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class Batcher:
    """Coalesces queued images into batches and runs them on the model instances."""

    def __init__(
        self,
        instances: Sequence[RunBatch],
        config: BatchingConfig,
        *,
        solo: RunBatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``solo``, optional, is an instance that uses every core: it runs a batch that has the
        machine to itself (no other batch running, nothing queued), so a lone request on a quiet
        server gets all the cores while a busy one keeps one instance per core."""
        if not instances:
            raise ValueError("a batcher needs at least one model instance")
        self._config = config
        self._clock = clock
        self._queue: collections.deque[_Item] = collections.deque()
        # Live images in the queue: the bound counts these, not cancelled leftovers.
        self._waiting = 0
        # Items taken by a worker and not yet answered, so close() can answer them.
        self._taken: set[_Item] = set()
        self._closed = False
        self._queued = asyncio.Event()
        self._instances = list(instances)
        # One thread per instance: a model instance never runs two batches at once.
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"model-{i}") for i in range(len(instances))
        ]
        self._solo = solo
        self._solo_executor = ThreadPoolExecutor(1, thread_name_prefix="model-solo")
        self._running = 0
        self._workers: list[asyncio.Task[None]] = []
        self.stats = BatcherStats()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(run, executor), name=f"batcher-{i}")
            for i, (run, executor) in enumerate(zip(self._instances, self._executors, strict=True))
        ]

    async def close(self) -> None:
        """Stops the workers and answers every caller still waiting with BatchError."""
        self._closed = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for item in self._queue:
            self._leave_queue(item)
        self._fail([*self._taken, *self._queue], BatchError("the server is shutting down"))
        self._taken.clear()
        self._queue.clear()
        for executor in [*self._executors, self._solo_executor]:
            # Off the loop: a batch still running must not stall everything else.
            await asyncio.to_thread(executor.shutdown, True)

    @property
    def queued(self) -> int:
        return self._waiting

    async def submit(self, arrays: Sequence[np.ndarray], deadline: float | None) -> np.ndarray:
        """Logits for ``arrays``, in order. Cancelling the caller drops its queued items."""
        limit = self._config.max_queue_size
        if self._closed:
            raise ServerUnavailable("the server is shutting down")
        if len(arrays) > limit:
            raise InvalidArgument(
                f"the request has {len(arrays)} images, more than max_queue_size ({limit})"
            )
        if self._waiting + len(arrays) > limit:
            raise ResourceExhausted(
                f"server busy: {self._waiting} images queued (max_queue_size {limit}); retry later"
            )
        loop = asyncio.get_running_loop()
        items = [_Item(array, loop.create_future(), deadline) for array in arrays]
        for item in items:
            item.future.add_done_callback(functools.partial(self._on_done, item))
        self._queue.extend(items)
        self._waiting += len(items)
        self._queued.set()
        try:
            rows = await asyncio.gather(*(item.future for item in items))
        finally:
            for item in items:
                item.future.cancel()
        return np.stack(rows)

    async def _work(self, run: RunBatch, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            inputs = np.stack([item.array for item in batch])
            solo = self._solo if self._running == 0 and not self._waiting else None
            self._running += 1
            try:
                if solo is not None:
                    self.stats.solo += 1
                    logits = await loop.run_in_executor(self._solo_executor, _run, solo, inputs)
                else:
                    logits = await loop.run_in_executor(executor, _run, run, inputs)
            except Exception as exc:
                # _run turns model failures into BatchError; anything else is a failure too, and
                # must not end this worker with its batch unanswered.
                error = exc if isinstance(exc, BatchError) else BatchError(f"model failed: {exc}")
                self._fail(batch, error)
            else:
                self._answer(batch, logits)
            finally:
                self._running -= 1
            # Not in a `finally`: when close() cancels this worker mid-batch, the batch must stay
            # in _taken so that close() can answer its callers.
            self._taken.difference_update(batch)

    async def run_alone(
        self, prepare: Callable[[], np.ndarray], deadline: float | None
    ) -> np.ndarray | None:
        """On an idle machine, ``prepare``s a batch and runs it on the solo instance, in one hop to
        its thread; returns None without doing anything when busy, and the caller ``submit``s.

        A quiet server's request otherwise crosses threads four times (to the decode pool and
        back, to the model thread and back), and waking an idle core costs up to half a
        millisecond on a virtual machine: this path crosses twice. ``prepare``'s own exceptions
        (a bad image) reach the caller as they are."""
        if self._solo is None or self._closed or self._running or self._waiting:
            return None
        if deadline is not None and self._clock() >= deadline:
            raise DeadlineExpired("deadline exceeded before the model ran")
        loop = asyncio.get_running_loop()
        self._running += 1
        running = loop.run_in_executor(self._solo_executor, _prepare_and_run, self._solo, prepare)
        # The instance stays taken until its thread is done, even if the caller gives up first.
        running.add_done_callback(self._lone_batch_done)
        logits = await asyncio.shield(running)
        self.stats.solo += 1
        self.stats.one_hop += 1
        self._count_batch(len(logits))
        return logits

    def _lone_batch_done(self, future: asyncio.Future[np.ndarray]) -> None:
        self._running -= 1

    def _count_batch(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.images += size
        self.stats.batch_sizes[size] += 1

    def _answer(self, batch: Sequence[_Item], logits: np.ndarray) -> None:
        self._count_batch(len(batch))
        for item, row in zip(batch, logits, strict=True):
            if not item.future.done():
                item.future.set_result(row)

    async def _next_batch(self) -> list[_Item]:
        await self._wait_for_work()
        limit = self._config.max_batch_size
        batch = self._take(limit)
        delay = self._config.max_queue_delay
        if batch and delay:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + delay
            while len(batch) < limit and (remaining := give_up - loop.time()) > 0:
                if not await self._wait_for_more(remaining):
                    break
                batch += self._take(limit - len(batch))
        return batch

    async def _wait_for_work(self) -> None:
        while not self._queue:
            self._queued.clear()
            await self._queued.wait()

    async def _wait_for_more(self, patience: float) -> bool:
        """Waits until more is queued (True) or ``patience`` seconds pass (False)."""
        self._queued.clear()
        try:
            await asyncio.wait_for(self._queued.wait(), patience)
        except TimeoutError:
            return False
        return True

    def _take(self, limit: int) -> list[_Item]:
        """Up to ``limit`` live items from the queue's head; drops cancelled and expired ones."""
        now = self._clock()
        batch: list[_Item] = []
        while self._queue and len(batch) < limit:
            item = self._queue.popleft()
            self._leave_queue(item)
            if item.future.done():
                self.stats.dropped += 1
            elif item.expired(now):
                self.stats.dropped += 1
                item.future.set_exception(DeadlineExpired("deadline exceeded while queued"))
            else:
                batch.append(item)
        self._taken.update(batch)
        return batch

    def _on_done(self, item: _Item, future: asyncio.Future[np.ndarray]) -> None:
        self._leave_queue(item)

    def _leave_queue(self, item: _Item) -> None:
        """Counts ``item`` out of the queue once: when taken, or when its caller gives up."""
        if item.queued:
            item.queued = False
            self._waiting -= 1

    @staticmethod
    def _fail(batch: Sequence[_Item], error: Exception) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)


def _run(model: RunBatch, inputs: np.ndarray) -> np.ndarray:
    """``model`` on ``inputs``, on the instance's thread; any failure becomes a BatchError."""
    try:
        logits = model(inputs)
        if logits.shape[0] != inputs.shape[0]:
            raise RuntimeError(f"model returned {logits.shape[0]} rows for {inputs.shape[0]}")
    except Exception as exc:
        log.exception("model failed on a batch of %d", inputs.shape[0])
        raise BatchError(f"model failed: {exc}") from exc
    return logits


def _prepare_and_run(model: RunBatch, prepare: Callable[[], np.ndarray]) -> np.ndarray:
    return _run(model, prepare())
