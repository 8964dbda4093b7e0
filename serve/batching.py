"""Dynamic batching across requests: one ``Batcher`` per model, in every request's path.

A request is admitted before any work is done for it: its rows are counted against the queue
bound (``max_queue_size``) from then until a batch takes them, so inputs being decoded count too,
and memory stays bounded whatever a request holds. Then its inputs are made (``Work``: images
decoded in a pool, or tensors that arrived whole) and queued as one chunk of rows. Every model
instance has a worker task that takes whatever is queued (up to ``max_batch_size`` rows, splitting
a chunk where it must) the moment it is free: an idle server starts at once, a busy one forms
bigger batches. Tensors are concatenated once, on the model's thread; a batch of one whole chunk
is not copied at all. Results are split back by slicing. Cancelled or expired work is dropped
before the model runs.

One more path, for the quietest case: a single-row request on an idle model is made and run in
one hop on the thread of the ``solo`` instance (the one that uses every core), which saves three
thread hand-offs; waking a sleeping core costs up to half a millisecond on a virtual machine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serve.errors import (
    BatchError,
    DeadlineExpired,
    InvalidArgument,
    ResourceExhausted,
    ServerUnavailable,
)
from serve.signature import row_count
from serve.statistics import InferenceStatistics, StageTimes
from serve.tracing import traced_rpc

__all__ = ["Batcher", "BatchingConfig", "Call", "ReadyTensors", "RunBatch", "Tensors", "Work"]

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]
# A model instance: a batch of named inputs (rows along the first axis) to named outputs.
RunBatch = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


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


@dataclass(frozen=True)
class Call:
    """How one request wants to be served."""

    # On the batcher's clock (``time.monotonic()``); None = no deadline.
    deadline: float | None = None
    # Wait for room in the queue instead of failing with RESOURCE_EXHAUSTED: streams do, so a
    # full queue slows their reading (HTTP/2 flow control then slows the client) instead.
    wait_for_room: bool = False
    # Set once the request holds its place in the queue: a stream reads its next item then.
    admitted: asyncio.Event | None = None


class Work(Protocol):
    """A request's inputs, possibly not made yet (images still to decode)."""

    @property
    def rows(self) -> int: ...

    def make(self) -> Tensors:
        """Makes the inputs on the calling thread (the one-hop path)."""
        ...

    async def make_async(self) -> Tensors:
        """Makes the inputs off the event loop, in parallel where that pays."""
        ...


class ReadyTensors:
    """Work for tensors that arrive whole: nothing to make."""

    def __init__(self, tensors: Tensors) -> None:
        self._tensors = tensors
        self.rows = row_count(tensors)

    def make(self) -> Tensors:
        return self._tensors

    async def make_async(self) -> Tensors:
        return self._tensors


@dataclass(eq=False)
class _Request:
    rows: int
    future: asyncio.Future[Tensors]
    deadline: float | None
    # Rows not yet taken into a batch: they hold places in the queue.
    untaken: int
    queued_at_ns: int = 0
    queue_ns: int = -1
    times: StageTimes = field(default_factory=StageTimes)
    parts: list[tuple[int, Mapping[str, np.ndarray]]] = field(default_factory=list)
    delivered: int = 0

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def deliver(self, start: int, outputs: Mapping[str, np.ndarray], times: StageTimes) -> None:
        self.parts.append((start, outputs))
        self.delivered += row_count(outputs)
        self.times = self.times + times
        if self.delivered == self.rows and not self.future.done():
            self.future.set_result(_assemble(self.parts))


@dataclass(eq=False)
class _Chunk:
    """Consecutive rows of one request, as views of its tensors."""

    request: _Request
    tensors: Mapping[str, np.ndarray]
    start: int
    rows: int
    # Chunks batch together only when every tensor agrees past the first axis.
    key: tuple[tuple[str, tuple[int, ...], str], ...]

    def split(self, rows: int) -> tuple[_Chunk, _Chunk]:
        head = {name: array[:rows] for name, array in self.tensors.items()}
        tail = {name: array[rows:] for name, array in self.tensors.items()}
        return (
            _Chunk(self.request, head, self.start, rows, self.key),
            _Chunk(self.request, tail, self.start + rows, self.rows - rows, self.key),
        )


def _chunk_of(request: _Request, tensors: Mapping[str, np.ndarray]) -> _Chunk:
    key = tuple(
        (name, tuple(array.shape[1:]), array.dtype.str) for name, array in sorted(tensors.items())
    )
    return _Chunk(request, tensors, 0, request.rows, key)


@dataclass
class BatcherStats:
    batches: int = 0
    rows: int = 0
    dropped: int = 0
    # Batches run on the solo instance,
    solo: int = 0
    # and of those, the requests made and run there in one hop.
    one_hop: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)


class Batcher:
    """Admits requests, coalesces their rows into batches and runs them on the model instances."""

    def __init__(
        self,
        instances: Sequence[RunBatch],
        config: BatchingConfig,
        *,
        solo: RunBatch | None = None,
        clock: Callable[[], float] = time.monotonic,
        statistics: InferenceStatistics | None = None,
    ) -> None:
        """``solo``, optional, is an instance that uses every core: it runs a batch that has the
        machine to itself (no other batch running, nothing queued), so a lone request on a quiet
        server gets all the cores while a busy one keeps one instance per core."""
        if not instances:
            raise ValueError("a batcher needs at least one model instance")
        self.config = config
        self._clock = clock
        self._queue: collections.deque[_Chunk] = collections.deque()
        # Rows admitted and not yet taken into a batch (made, being made, or queued): the bound
        # applies to these.
        self._reserved = 0
        # Requests admitted and not yet answered, so close() can answer them.
        self._requests: set[_Request] = set()
        self._closed = False
        self._queued = asyncio.Event()
        self._room = asyncio.Event()
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
        self.statistics = statistics if statistics is not None else InferenceStatistics()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(run, executor), name=f"batcher-{i}")
            for i, (run, executor) in enumerate(zip(self._instances, self._executors, strict=True))
        ]

    async def close(self) -> None:
        """Stops the workers and answers every caller still waiting with BatchError."""
        self._closed = True
        self._room.set()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._queue.clear()
        # UNAVAILABLE: a client may retry elsewhere, as it would for a refused request.
        self._fail(self._requests, ServerUnavailable("the server is shutting down"))
        for executor in [*self._executors, self._solo_executor]:
            # Off the loop: a batch still running must not stall everything else.
            await asyncio.to_thread(executor.shutdown, True)

    @property
    def queued(self) -> int:
        """Rows admitted and not yet taken into a batch."""
        return self._reserved

    @property
    def idle(self) -> bool:
        return not self._running and not self._reserved

    async def infer(self, work: Work, call: Call | None = None) -> Tensors:
        """The model's outputs for ``work``'s rows, in order. Cancelling the caller drops its
        queued rows; the rows hold places in the queue from admission until a batch takes them."""
        call = call or Call()
        rows = work.rows
        self._check_admissible(rows, call)
        await self._reserve(rows, call)
        started = time.perf_counter_ns()
        request = _Request(rows, asyncio.get_running_loop().create_future(), call.deadline, rows)
        self._requests.add(request)
        try:
            if one_hop := self._may_run_alone(rows):
                outputs = await self._run_alone(work, request)
                # The one hop made the inputs on the model's thread: its input stage.
                decode_ns = request.times.input_ns
            else:
                making = time.perf_counter_ns()
                tensors = await work.make_async()
                decode_ns = time.perf_counter_ns() - making
                if self._closed:
                    raise ServerUnavailable("the server is shutting down")
                if request.expired(self._clock()):
                    raise DeadlineExpired("deadline exceeded before the model ran")
                self._enqueue(request, tensors)
                outputs = await request.future
        except Exception:
            self.statistics.record_failure(time.perf_counter_ns() - started)
            raise
        finally:
            self._requests.discard(request)
            if request.untaken:
                # A caller that gives up takes its rows out of the queue at once: their places
                # are free again, so their memory must go too.
                self._remove_chunks(request)
            self._release(request.untaken)
            request.untaken = 0
            request.future.cancel()
        total_ns = time.perf_counter_ns() - started
        queue_ns = max(request.queue_ns, 0)
        self.statistics.record_success(rows, total_ns, queue_ns, decode_ns, request.times)
        traced = traced_rpc.get()
        if traced is not None:
            times = request.times
            # The one hop's input stage was the decoding.
            compute_ns = times.infer_ns + times.output_ns + (0 if one_hop else times.input_ns)
            traced.add_stages(started, decode_ns, queue_ns, compute_ns, started + total_ns)
        return outputs

    def _check_admissible(self, rows: int, call: Call) -> None:
        limit = self.config.max_queue_size
        if self._closed:
            raise ServerUnavailable("the server is shutting down")
        if rows > limit:
            raise InvalidArgument(
                f"the request has {rows} rows (images), more than max_queue_size ({limit})"
            )
        if call.deadline is not None and self._clock() >= call.deadline:
            raise DeadlineExpired("deadline exceeded before the request was admitted")

    async def _reserve(self, rows: int, call: Call) -> None:
        limit = self.config.max_queue_size
        while self._reserved + rows > limit:
            if not call.wait_for_room:
                raise ResourceExhausted(
                    f"server busy: {self._reserved} rows queued (max_queue_size {limit}); "
                    "retry later"
                )
            await self._wait_for_room(call.deadline)
            if self._closed:
                raise ServerUnavailable("the server is shutting down")
        self._reserved += rows
        if call.admitted is not None:
            call.admitted.set()

    async def _wait_for_room(self, deadline: float | None) -> None:
        self._room.clear()
        patience = None if deadline is None else deadline - self._clock()
        try:
            await asyncio.wait_for(self._room.wait(), patience)
        except TimeoutError:
            raise DeadlineExpired("deadline exceeded while waiting for room in the queue") from None

    def _release(self, rows: int) -> None:
        if rows:
            self._reserved -= rows
            self._room.set()

    def _may_run_alone(self, rows: int) -> bool:
        # Several rows are made faster in parallel (images decode in a pool) than on one thread.
        return (
            rows == 1
            and self._solo is not None
            and not self._closed
            and not self._running
            and not self._queue
            and self._reserved == rows
        )

    async def _run_alone(self, work: Work, request: _Request) -> Tensors:
        assert self._solo is not None
        loop = asyncio.get_running_loop()
        self._running += 1
        request.queue_ns = 0
        running = loop.run_in_executor(
            self._solo_executor, _make_and_run, self._solo, work.make, request.rows
        )
        # The instance stays taken until its thread is done, even if the caller gives up first.
        running.add_done_callback(self._lone_batch_done)
        request.untaken = 0
        self._release(request.rows)
        outputs, times = await asyncio.shield(running)
        self.stats.solo += 1
        self.stats.one_hop += 1
        self._count_batch(request.rows, times)
        request.deliver(0, outputs, times)
        return await request.future

    def _lone_batch_done(self, future: asyncio.Future[tuple[Tensors, StageTimes]]) -> None:
        self._running -= 1
        if not future.cancelled():
            # Retrieved even when the caller gave up first (a bad image), so it isn't reported.
            future.exception()

    def _remove_chunks(self, request: _Request) -> None:
        kept = collections.deque(chunk for chunk in self._queue if chunk.request is not request)
        self.stats.dropped += len(self._queue) - len(kept)
        self._queue = kept

    def _enqueue(self, request: _Request, tensors: Mapping[str, np.ndarray]) -> None:
        request.queued_at_ns = time.perf_counter_ns()
        self._queue.append(_chunk_of(request, tensors))
        self._queued.set()

    async def _work(self, run: RunBatch, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            solo = self._solo if self._running == 0 and not self._queue else None
            self._running += 1
            parts = [chunk.tensors for chunk in batch]
            try:
                if solo is not None:
                    self.stats.solo += 1
                    ran = loop.run_in_executor(self._solo_executor, _run_batch, solo, parts)
                else:
                    ran = loop.run_in_executor(executor, _run_batch, run, parts)
                outputs, times = await ran
                self._answer(batch, outputs, times)
            except Exception as exc:
                # _run_batch turns model failures into BatchError; anything else (outputs that
                # can't be split back, say) is a failure too, and must not end this worker with
                # its batch unanswered.
                error = exc if isinstance(exc, BatchError) else BatchError(f"model failed: {exc}")
                self._fail([chunk.request for chunk in batch], error)
            finally:
                self._running -= 1

    def _count_batch(self, rows: int, times: StageTimes) -> None:
        self.stats.batches += 1
        self.stats.rows += rows
        self.stats.batch_sizes[rows] += 1
        self.statistics.record_batch(rows, times)

    def _answer(
        self, batch: Sequence[_Chunk], outputs: Mapping[str, np.ndarray], times: StageTimes
    ) -> None:
        split_started = time.perf_counter_ns()
        offset = 0
        pieces = []
        for chunk in batch:
            pieces.append(
                {name: out[offset : offset + chunk.rows] for name, out in outputs.items()}
            )
            offset += chunk.rows
        times = StageTimes(times.input_ns, times.infer_ns, time.perf_counter_ns() - split_started)
        self._count_batch(offset, times)
        for chunk, piece in zip(batch, pieces, strict=True):
            chunk.request.deliver(chunk.start, piece, times)

    async def _next_batch(self) -> list[_Chunk]:
        await self._wait_for_work()
        limit = self.config.max_batch_size
        batch = self._take(limit)
        delay = self.config.max_queue_delay
        if batch and delay:
            loop = asyncio.get_running_loop()
            give_up = loop.time() + delay
            while _rows(batch) < limit and (remaining := give_up - loop.time()) > 0:
                if not await self._wait_for_more(remaining):
                    break
                batch += self._take(limit - _rows(batch), batch[0].key)
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

    def _take(self, limit: int, key: tuple[object, ...] | None = None) -> list[_Chunk]:
        """Up to ``limit`` live rows from the queue's head, all of one shape; drops the chunks of
        cancelled, failed and expired requests."""
        now = self._clock()
        batch: list[_Chunk] = []
        room = limit
        while self._queue and room:
            chunk = self._queue[0]
            request = chunk.request
            if request.future.done() or request.expired(now):
                self._queue.popleft()
                self._drop(chunk, now)
                continue
            if key is not None and chunk.key != key:
                break
            key = chunk.key
            self._queue.popleft()
            if chunk.rows > room:
                chunk, rest = chunk.split(room)
                self._queue.appendleft(rest)
            if request.queue_ns < 0:
                request.queue_ns = time.perf_counter_ns() - request.queued_at_ns
            request.untaken -= chunk.rows
            self._release(chunk.rows)
            batch.append(chunk)
            room -= chunk.rows
        return batch

    def _drop(self, chunk: _Chunk, now: float) -> None:
        request = chunk.request
        self.stats.dropped += 1
        # A caller that gave up has released its places already (``infer``'s ``finally``).
        held = min(chunk.rows, request.untaken)
        request.untaken -= held
        self._release(held)
        if not request.future.done():
            request.future.set_exception(DeadlineExpired("deadline exceeded while queued"))

    @staticmethod
    def _fail(requests: Sequence[_Request] | set[_Request], error: Exception) -> None:
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)


def _rows(batch: Sequence[_Chunk]) -> int:
    return sum(chunk.rows for chunk in batch)


def _assemble(parts: list[tuple[int, Mapping[str, np.ndarray]]]) -> Tensors:
    """A request's outputs from the pieces its chunks got, in row order; one piece: no copy."""
    if len(parts) == 1:
        return dict(parts[0][1])
    ordered = [outputs for _, outputs in sorted(parts, key=lambda part: part[0])]
    return {name: np.concatenate([o[name] for o in ordered]) for name in ordered[0]}


def _run_batch(
    model: RunBatch, parts: Sequence[Mapping[str, np.ndarray]]
) -> tuple[Tensors, StageTimes]:
    """Joins the chunks and runs ``model`` on them, on the instance's thread; any failure becomes
    a BatchError."""
    started = time.perf_counter_ns()
    inputs = (
        dict(parts[0])
        if len(parts) == 1
        else {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    )
    joined = time.perf_counter_ns()
    outputs = _run(model, inputs)
    return outputs, StageTimes(joined - started, time.perf_counter_ns() - joined, 0)


def _run(model: RunBatch, inputs: Mapping[str, np.ndarray]) -> Tensors:
    rows = row_count(inputs)
    try:
        outputs = dict(model(inputs))
        if not outputs:
            raise RuntimeError("model returned no outputs")
        for name, array in outputs.items():
            if not isinstance(array, np.ndarray) or array.ndim == 0 or len(array) != rows:
                got = len(array) if isinstance(array, np.ndarray) and array.ndim else "no"
                raise RuntimeError(f"model returned {got} rows of {name!r} for {rows}")
    except Exception as exc:
        log.exception("model failed on a batch of %d", rows)
        raise BatchError(f"model failed: {exc}") from exc
    return outputs


def _make_and_run(
    model: RunBatch, make: Callable[[], Tensors], rows: int
) -> tuple[Tensors, StageTimes]:
    """The one-hop path: ``make``'s own exceptions (a bad image) reach the caller as they are."""
    started = time.perf_counter_ns()
    inputs = make()
    made = time.perf_counter_ns()
    outputs = _run(model, inputs)
    return outputs, StageTimes(made - started, time.perf_counter_ns() - made, 0)
