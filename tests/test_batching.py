"""The dynamic batcher, driven by events rather than time.

The model instances are plain functions run in the batcher's executor threads: each takes named
tensors and records the batches it receives (input "x" holds one marker value per image: every
image is an array filled with its marker), answers with "y", logits that echo the markers, and
blocks on a ``threading.Event`` while a test needs it busy. Work that records how it was made
tells the one-hop path (``make()`` on the solo thread) from the queued one (``make_async()``).
Deadlines use a fake clock. Nothing here sleeps to "wait long enough": tests wait for a condition,
with a generous hang guard only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from serve.batching import Batcher, BatchingConfig, Call, ReadyTensors, RunBatch, Tensors, Work
from serve.errors import (
    BatchError,
    DeadlineExpired,
    ImageError,
    InvalidArgument,
    ResourceExhausted,
    ServerUnavailable,
    TorchgrpcError,
)

HANG_GUARD = 10.0  # seconds; only ever reached when something is broken
SHAPE = (3, 2, 2)  # one tiny "image"


# ---------------------------------------------------------------------------------------------
# Fakes and helpers


def image(
    marker: float, shape: tuple[int, ...] = SHAPE, dtype: npt.DTypeLike = np.float32
) -> np.ndarray:
    """An image whose every value is ``marker``: its identity survives stacking into a batch."""
    return np.full(shape, marker, dtype=dtype)


def batch_of(
    markers: Sequence[float], shape: tuple[int, ...] = SHAPE, dtype: npt.DTypeLike = np.float32
) -> np.ndarray:
    return np.stack([image(marker, shape, dtype) for marker in markers])


def ready(
    markers: Sequence[float], shape: tuple[int, ...] = SHAPE, dtype: npt.DTypeLike = np.float32
) -> ReadyTensors:
    """Work for images of ``markers`` that arrive whole, as input "x"."""
    return ReadyTensors({"x": batch_of(markers, shape, dtype)})


def markers_of(inputs: np.ndarray) -> list[float]:
    return [float(value) for value in inputs.reshape(len(inputs), -1).mean(axis=1)]


def echo_logits(inputs: np.ndarray) -> np.ndarray:
    """Logits whose row encodes its input: ``[marker, -marker, 2 * marker]``."""
    means = inputs.reshape(len(inputs), -1).mean(axis=1)
    return np.stack([means, -means, 2 * means], axis=1).astype(np.float32)


def echo(inputs: Mapping[str, np.ndarray]) -> Tensors:
    return {"y": echo_logits(inputs["x"])}


def fail_on(poison: float) -> RunBatch:
    """A model that echoes, and fails on any batch holding ``poison``."""

    def respond(inputs: Mapping[str, np.ndarray]) -> Tensors:
        if poison in markers_of(inputs["x"]):
            raise ValueError(f"cannot digest {poison}")
        return echo(inputs)

    return respond


def expected_rows(markers: Sequence[float]) -> np.ndarray:
    return echo_logits(batch_of(markers))


class FakeClock:
    """The batcher's injectable clock: time moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeModel:
    """A model instance: records each batch, and blocks while ``gate`` is clear."""

    def __init__(self, *, blocked: bool = False, respond: RunBatch = echo) -> None:
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self.respond = respond
        self.batches: list[list[float]] = []  # the markers of input "x", batch by batch
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[str] = []
        self.received: list[Mapping[str, np.ndarray]] = []
        self.returned: list[Mapping[str, np.ndarray]] = []
        self.threads: list[threading.Thread] = []
        self.inside = 0  # batches being run right now
        self.max_inside = 0
        self._lock = threading.Lock()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        x = inputs["x"]
        with self._lock:
            self.batches.append(markers_of(x))
            self.shapes.append(x.shape)
            self.dtypes.append(str(x.dtype))
            self.received.append(inputs)
            self.threads.append(threading.current_thread())
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        try:
            if not self.gate.wait(HANG_GUARD):
                raise RuntimeError("the test never released the fake model")
            outputs = self.respond(inputs)
            self.returned.append(outputs)
            return outputs
        finally:
            with self._lock:
                self.inside -= 1

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def release(self) -> None:
        self.gate.set()


class RecordedWork:
    """Work for images of ``markers`` that records which path made it: ``make()`` notes the
    thread it ran on (the one-hop path), ``make_async()`` counts its calls (the queued path) and
    waits for ``gate``, if given, before making anything. Both raise ``error``, if given, as a
    bad image would."""

    def __init__(
        self,
        markers: Sequence[float],
        *,
        error: Exception | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.markers = list(markers)
        self.rows = len(self.markers)
        self.error = error
        self.gate = gate
        self.made_on: list[threading.Thread] = []
        self.made_async = 0

    def make(self) -> Tensors:
        self.made_on.append(threading.current_thread())
        return self._tensors()

    async def make_async(self) -> Tensors:
        self.made_async += 1
        if self.gate is not None:
            await self.gate.wait()
        return self._tensors()

    def _tensors(self) -> Tensors:
        if self.error is not None:
            raise self.error
        return {"x": batch_of(self.markers)}


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Yields to the event loop until ``predicate()`` holds; fails after ``HANG_GUARD`` seconds."""
    give_up = time.monotonic() + HANG_GUARD
    spins = 0
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        # Spin on the loop at first; then poll gently so the model threads get the GIL.
        await asyncio.sleep(0 if spins < 100 else 0.001)
        spins += 1


async def settle(rounds: int = 100) -> None:
    """Lets the event loop run ``rounds`` times: enough for callbacks already due, no waiting."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def result(task: asyncio.Task[Tensors]) -> Tensors:
    return await asyncio.wait_for(task, HANG_GUARD)


async def logits(task: asyncio.Task[Tensors]) -> np.ndarray:
    """The request's output "y" (hang-guarded)."""
    return (await result(task))["y"]


async def failure(task: asyncio.Task[Tensors]) -> BaseException:
    """The exception ``task`` ends with (hang-guarded); fails the test if it succeeds."""
    done, _ = await asyncio.wait([task], timeout=HANG_GUARD)
    assert done, "the request never finished"
    assert not task.cancelled(), "the request was cancelled instead of failing"
    error = task.exception()
    assert error is not None, "the request succeeded"
    return error


@dataclass
class Harness:
    batcher: Batcher
    models: list[FakeModel]
    clock: FakeClock
    solo: FakeModel | None = None
    tasks: list[asyncio.Task[Tensors]] = field(default_factory=list)
    started: int = 0  # caller tasks that have run far enough to queue their rows

    @property
    def model(self) -> FakeModel:
        return self.models[0]

    def infer(self, work: Work, call: Call | None = None) -> asyncio.Task[Tensors]:
        """A caller's request, as its own task (it is admitted when the loop next runs it)."""

        async def caller() -> Tensors:
            self.started += 1
            # With room in the queue, infer() admits and queues tensors that arrive whole before
            # its first await: once ``started`` counts this caller, its rows are queued (or
            # already taken by a worker, or running in one hop).
            return await self.batcher.infer(work, call)

        task = asyncio.create_task(caller())
        self.tasks.append(task)
        return task

    def submit(
        self,
        markers: Sequence[float],
        deadline: float | None = None,
        *,
        shape: tuple[int, ...] = SHAPE,
        dtype: npt.DTypeLike = np.float32,
    ) -> asyncio.Task[Tensors]:
        """A caller's request for images of ``markers``, arriving whole."""
        return self.infer(ready(markers, shape, dtype), Call(deadline=deadline))

    async def all_started(self) -> None:
        await until(lambda: self.started == len(self.tasks), "every caller to queue its rows")

    async def queued(self, count: int) -> None:
        await until(lambda: self.batcher.queued == count, f"{count} rows queued")

    async def batches(self, count: int, model: FakeModel | None = None) -> None:
        watched = model or self.model
        await until(lambda: len(watched.batches) >= count, f"{count} batches started")
        assert len(watched.batches) == count, watched.batches

    def release_all(self) -> None:
        for model in [*self.models, *([self.solo] if self.solo else [])]:
            model.release()


MakeHarness = Callable[..., Harness]


@pytest.fixture
async def make() -> AsyncIterator[MakeHarness]:
    """Builds started batchers over fake models; on teardown releases and closes them all and
    collects every caller task, so nothing is left pending on the session's loop."""
    made: list[Harness] = []

    def build(
        *,
        instances: int = 1,
        blocked: bool = False,
        start: bool = True,
        respond: RunBatch = echo,
        solo: bool = False,
        **config: Any,
    ) -> Harness:
        models = [FakeModel(blocked=blocked, respond=respond) for _ in range(instances)]
        solo_model = FakeModel(blocked=blocked, respond=respond) if solo else None
        clock = FakeClock()
        batcher = Batcher(models, BatchingConfig(**config), solo=solo_model, clock=clock)
        if start:
            batcher.start()
        harness = Harness(batcher, models, clock, solo_model)
        made.append(harness)
        return harness

    yield build

    for harness in made:
        harness.release_all()
        await harness.batcher.close()
        for task in harness.tasks:
            task.cancel()
        await asyncio.gather(*harness.tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": -3}, "max_batch_size"),
        ({"max_queue_delay": -0.001}, "max_queue_delay"),
        ({"max_queue_delay": -1.0}, "max_queue_delay"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"max_queue_size": -1}, "max_queue_size"),
    ],
)
def test_config_rejects_bad_values(changes: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        BatchingConfig(**changes)


def test_config_accepts_the_smallest_valid_values() -> None:
    config = BatchingConfig(max_batch_size=1, max_queue_delay=0.0, max_queue_size=1)
    assert (config.max_batch_size, config.max_queue_delay, config.max_queue_size) == (1, 0.0, 1)
    assert BatchingConfig().max_queue_delay == 0.0  # the default never waits to fill a batch


def test_batcher_needs_an_instance() -> None:
    with pytest.raises(ValueError, match="at least one model instance"):
        Batcher([], BatchingConfig())


# ---------------------------------------------------------------------------------------------
# Forming batches


async def test_idle_batcher_runs_a_single_image_at_once(make: MakeHarness) -> None:
    h = make(max_batch_size=16, max_queue_delay=0.0, blocked=True)
    caller = h.submit([7.0])
    # The model is already running a batch of one: nothing waited for the batch to fill.
    await h.batches(1)
    assert h.model.batches == [[7.0]]
    assert h.model.shapes == [(1, *SHAPE)]
    assert not caller.done()
    h.model.release()
    outputs = await result(caller)
    assert list(outputs) == ["y"]
    np.testing.assert_array_equal(outputs["y"], expected_rows([7.0]))
    assert h.batcher.stats.batches == 1 and h.batcher.stats.rows == 1
    assert h.batcher.stats.batch_sizes == {1: 1}
    assert h.batcher.stats.dropped == 0


async def test_busy_model_coalesces_queued_requests_in_queue_order(make: MakeHarness) -> None:
    h = make(max_batch_size=4, blocked=True)
    first = h.submit([1.0])
    await h.batches(1)
    # Ten images from four concurrent callers queue up while the model is busy.
    requests = {
        "b": [20.0, 21.0],
        "c": [30.0, 31.0, 32.0],
        "d": [40.0],
        "e": [50.0, 51.0, 52.0, 53.0],
    }
    callers = {name: h.submit(markers) for name, markers in requests.items()}
    await h.queued(10)
    assert h.model.batches == [[1.0]]  # still busy with the first: nothing else ran

    h.model.release()
    for name, markers in requests.items():
        # Each caller gets exactly its own rows, in its own order; "c" and "e" were split across
        # two batches and reassembled.
        np.testing.assert_array_equal(await logits(callers[name]), expected_rows(markers))
    np.testing.assert_array_equal(await logits(first), expected_rows([1.0]))

    assert h.model.batches == [
        [1.0],
        [20.0, 21.0, 30.0, 31.0],
        [32.0, 40.0, 50.0, 51.0],
        [52.0, 53.0],
    ]
    assert h.model.sizes[1:] == [4, 4, 2]
    stats = h.batcher.stats
    assert (stats.batches, stats.rows, stats.dropped) == (4, 11, 0)
    assert stats.batch_sizes == {1: 1, 4: 2, 2: 1}
    assert h.batcher.queued == 0


async def test_one_request_larger_than_a_batch_is_split_and_reassembled(
    make: MakeHarness,
) -> None:
    h = make(max_batch_size=3)
    markers = [float(i) for i in range(1, 9)]
    outputs = await asyncio.wait_for(h.batcher.infer(ready(markers)), HANG_GUARD)
    np.testing.assert_array_equal(outputs["y"], expected_rows(markers))
    assert [m for batch in h.model.batches for m in batch] == markers
    assert h.model.sizes == [3, 3, 2]


async def test_callers_sharing_a_batch_get_only_their_own_rows(make: MakeHarness) -> None:
    h = make(max_batch_size=8, blocked=True)
    first = h.submit([0.5])
    await h.batches(1)
    callers = {c: h.submit([c * 10.0 + j for j in range(c)]) for c in range(1, 5)}
    await h.queued(10)
    h.model.release()
    for c, task in callers.items():
        rows = await logits(task)
        assert rows.shape == (c, 3)
        np.testing.assert_array_equal(rows[:, 0], [c * 10.0 + j for j in range(c)])
    await result(first)
    assert h.model.sizes == [1, 8, 2]


async def test_max_queue_delay_waits_for_a_fuller_batch(make: MakeHarness) -> None:
    # A long delay, but the batch is formed the moment it is full: the hang guard (10 s) would
    # fail this test long before the 30 s delay ran out.
    h = make(max_batch_size=2, max_queue_delay=30.0)
    first = h.submit([1.0])
    await h.all_started()
    await h.queued(0)  # a worker has taken it and is waiting for company
    await settle()
    assert h.model.batches == [] and not first.done()

    second = h.submit([2.0])
    np.testing.assert_array_equal(await logits(first), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(second), expected_rows([2.0]))
    assert h.model.batches == [[1.0, 2.0]]
    assert h.batcher.stats.batch_sizes == {2: 1}


async def test_max_queue_delay_takes_only_what_fits(make: MakeHarness) -> None:
    h = make(max_batch_size=3, max_queue_delay=30.0)
    first = h.submit([1.0])
    await h.all_started()
    await h.queued(0)  # taken, waiting for company
    # Four more images arrive: two fill the waiting batch, the other two queue for the next.
    second = h.submit([2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(await logits(first), expected_rows([1.0]))
    await h.batches(1)
    assert h.model.batches == [[1.0, 2.0, 3.0]]
    third = h.submit([6.0])  # completes the second batch (4, 5, 6)
    np.testing.assert_array_equal(await logits(second), expected_rows([2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(await logits(third), expected_rows([6.0]))
    assert h.model.batches == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


async def test_two_instances_run_batches_in_parallel(make: MakeHarness) -> None:
    h = make(instances=2, max_batch_size=4, blocked=True)
    first = h.submit([1.0, 2.0])
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the first batch")
    # One instance is blocked; the other takes the next request while the first is still busy.
    second = h.submit([3.0])
    await until(lambda: all(m.inside == 1 for m in h.models), "both instances busy")
    assert sorted(batch for m in h.models for batch in m.batches) == [[1.0, 2.0], [3.0]]
    busy_threads = {m.threads[0] for m in h.models}
    assert len(busy_threads) == 2  # a thread per instance

    h.release_all()
    np.testing.assert_array_equal(await logits(first), expected_rows([1.0, 2.0]))
    np.testing.assert_array_equal(await logits(second), expected_rows([3.0]))
    assert h.batcher.stats.batches == 2


async def test_an_instance_never_runs_two_batches_at_once(make: MakeHarness) -> None:
    h = make(max_batch_size=1, blocked=True)
    callers = [h.submit([float(i)]) for i in range(5)]
    await h.batches(1)
    await h.queued(4)
    h.model.release()
    for i, task in enumerate(callers):
        np.testing.assert_array_equal(await logits(task), expected_rows([float(i)]))
    assert h.model.max_inside == 1
    assert h.model.sizes == [1] * 5
    assert len({thread.name for thread in h.model.threads}) == 1


async def test_requests_that_differ_past_the_first_axis_are_not_batched_together(
    make: MakeHarness,
) -> None:
    h = make(max_batch_size=8, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    callers = {
        (2.0, 3.0): h.submit([2.0, 3.0]),
        (4.0,): h.submit([4.0], shape=(3, 4, 4)),  # another size
        (5.0,): h.submit([5.0], dtype=np.float64),  # another dtype
        (6.0, 7.0): h.submit([6.0, 7.0]),
        (8.0,): h.submit([8.0]),
    }
    await h.queued(7)
    h.model.release()
    for markers, task in callers.items():
        np.testing.assert_array_equal(await logits(task), expected_rows(markers))
    await result(running)
    # A batch stops at the first chunk that differs; chunks that agree batch together again.
    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0], [5.0], [6.0, 7.0, 8.0]]
    assert h.model.shapes == [(1, *SHAPE), (2, *SHAPE), (1, 3, 4, 4), (1, *SHAPE), (3, *SHAPE)]
    assert h.model.dtypes == ["float32", "float32", "float32", "float64", "float32"]


def scaled(inputs: Mapping[str, np.ndarray]) -> Tensors:
    """Two inputs ("x" images, "scale" one number a row) to two outputs: "y" (echo logits) and
    "z" (``[marker * scale, scale]``)."""
    means = inputs["x"].reshape(len(inputs["x"]), -1).mean(axis=1)
    scale = inputs["scale"][:, 0]
    return {"y": echo_logits(inputs["x"]), "z": np.stack([means * scale, scale], axis=1)}


async def test_several_inputs_and_outputs_are_split_back_per_request(make: MakeHarness) -> None:
    h = make(max_batch_size=4, blocked=True, respond=scaled)
    requests = {
        "a": ([1.0], [10.0]),
        "b": ([2.0, 3.0], [20.0, 30.0]),
        "c": ([4.0], [40.0]),
        "d": ([5.0, 6.0, 7.0], [50.0, 60.0, 70.0]),
    }

    def work(markers: list[float], scales: list[float]) -> ReadyTensors:
        column = np.array(scales, dtype=np.float32)[:, None]
        return ReadyTensors({"x": batch_of(markers), "scale": column})

    callers = {"a": h.infer(work(*requests["a"]))}
    await h.batches(1)  # "a" runs alone; the others queue behind it
    callers |= {name: h.infer(work(*requests[name])) for name in "bcd"}
    await h.queued(6)
    h.model.release()
    for name, (markers, scales) in requests.items():
        outputs = await result(callers[name])
        assert sorted(outputs) == ["y", "z"]
        np.testing.assert_array_equal(outputs["y"], expected_rows(markers))
        products = [m * s for m, s in zip(markers, scales, strict=True)]
        np.testing.assert_array_equal(outputs["z"], np.stack([products, scales], axis=1))
    # "d" was split across two batches and both its outputs were reassembled.
    assert h.model.batches == [[1.0], [2.0, 3.0, 4.0, 5.0], [6.0, 7.0]]
    assert [sorted(inputs) for inputs in h.model.received] == [["scale", "x"]] * 3


# ---------------------------------------------------------------------------------------------
# Copies: a request's rows stay views of its tensors until a batch joins several


async def test_a_request_of_one_whole_chunk_reaches_the_model_without_a_copy(
    make: MakeHarness,
) -> None:
    h = make()
    x = batch_of([1.0, 2.0])
    outputs = await result(h.infer(ReadyTensors({"x": x})))
    (received,) = h.model.received
    assert received["x"] is x
    # The answer's rows are views of what the model returned.
    (returned,) = h.model.returned
    assert outputs["y"].base is returned["y"]
    np.testing.assert_array_equal(outputs["y"], expected_rows([1.0, 2.0]))


async def test_a_request_split_across_batches_reaches_the_model_as_views(
    make: MakeHarness,
) -> None:
    h = make(max_batch_size=2)
    x = batch_of([1.0, 2.0, 3.0])
    rows = await logits(h.infer(ReadyTensors({"x": x})))
    assert h.model.batches == [[1.0, 2.0], [3.0]]
    assert [inputs["x"].base is x for inputs in h.model.received] == [True, True]
    np.testing.assert_array_equal(rows, expected_rows([1.0, 2.0, 3.0]))


async def test_chunks_batched_together_are_joined_into_a_new_array(make: MakeHarness) -> None:
    h = make(max_batch_size=4, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    first, second = ready([2.0]), ready([3.0])
    callers = [h.infer(first), h.infer(second)]
    await h.queued(2)
    h.model.release()
    np.testing.assert_array_equal(await logits(callers[0]), expected_rows([2.0]))
    np.testing.assert_array_equal(await logits(callers[1]), expected_rows([3.0]))
    await result(running)
    joined = h.model.received[1]["x"]
    assert h.model.batches[1] == [2.0, 3.0]
    assert not np.shares_memory(joined, first.make()["x"])
    assert not np.shares_memory(joined, second.make()["x"])


# ---------------------------------------------------------------------------------------------
# The bounded queue


async def test_full_queue_rejects_new_requests(make: MakeHarness) -> None:
    h = make(max_batch_size=8, max_queue_size=3, blocked=True)
    running = h.submit([1.0])  # taken by the worker: it no longer counts as queued
    await h.batches(1)
    waiting_b = h.submit([2.0, 3.0])
    await h.queued(2)

    with pytest.raises(ResourceExhausted, match="max_queue_size") as rejected:
        await h.batcher.infer(ready([4.0, 5.0]))  # 2 + 2 > 3
    assert rejected.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rejected.value.message == "server busy: 2 rows queued (max_queue_size 3); retry later"
    assert h.batcher.queued == 2  # a rejected request queues nothing

    waiting_c = h.submit([6.0])  # exactly fills the queue
    await h.queued(3)
    with pytest.raises(ResourceExhausted, match="max_queue_size"):
        await h.batcher.infer(ready([7.0]))

    h.model.release()
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(waiting_b), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await logits(waiting_c), expected_rows([6.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0, 6.0]]  # the rejected never reached the model

    # Once drained, the queue accepts again.
    outputs = await asyncio.wait_for(h.batcher.infer(ready([8.0])), HANG_GUARD)
    np.testing.assert_array_equal(outputs["y"], expected_rows([8.0]))


async def test_request_larger_than_the_queue_is_rejected(make: MakeHarness) -> None:
    """Retrying can't help such a request: it is the caller's to split, INVALID_ARGUMENT."""
    h = make(max_queue_size=2)
    work = RecordedWork([1.0, 2.0, 3.0])
    with pytest.raises(
        InvalidArgument, match=r"has 3 rows \(images\), more than max_queue_size \(2\)"
    ):
        await h.batcher.infer(work)
    assert h.model.batches == [] and h.batcher.queued == 0
    assert (work.made_on, work.made_async) == ([], 0)  # refused before any work


async def test_cancelled_requests_free_their_queue_places_at_once(make: MakeHarness) -> None:
    h = make(max_batch_size=1, max_queue_size=2, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    doomed = h.submit([2.0, 3.0])
    await h.queued(2)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert h.batcher.queued == 0
    # Its rows left the queue with their places (their memory with them), before any worker
    # reached them.
    assert h.batcher.stats.dropped == 1
    later = h.submit([4.0, 5.0])  # would be "server busy" if the cancelled places still counted
    await h.queued(2)
    h.model.release()
    assert [row[0] for row in await logits(later)] == [4.0, 5.0]
    await result(running)
    assert h.model.batches == [[1.0], [4.0], [5.0]]


async def test_infer_after_close_is_unavailable(make: MakeHarness) -> None:
    h = make()
    await h.batcher.close()
    with pytest.raises(ServerUnavailable, match="shutting down"):
        await h.batcher.infer(ready([1.0]))


# ---------------------------------------------------------------------------------------------
# Backpressure: admission comes first, and a caller may wait for room instead of failing


async def test_a_request_waiting_for_room_is_admitted_once_a_batch_frees_it(
    make: MakeHarness,
) -> None:
    h = make(max_batch_size=2, max_queue_size=2, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    queued = h.submit([2.0, 3.0])
    await h.queued(2)
    admitted = asyncio.Event()
    waiter = h.infer(ready([4.0]), Call(wait_for_room=True, admitted=admitted))
    await h.all_started()
    await settle()
    assert not admitted.is_set() and not waiter.done()  # waiting, not refused
    assert h.batcher.queued == 2

    # The same request without wait_for_room is refused at once.
    with pytest.raises(ResourceExhausted, match=r"server busy: 2 rows queued"):
        await h.batcher.infer(ready([5.0]))

    h.model.release()  # the model takes 2 and 3: their places go to the waiter
    await asyncio.wait_for(admitted.wait(), HANG_GUARD)
    np.testing.assert_array_equal(await logits(waiter), expected_rows([4.0]))
    np.testing.assert_array_equal(await logits(queued), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0]]
    assert h.batcher.queued == 0


async def test_a_request_with_room_is_admitted_at_once(make: MakeHarness) -> None:
    h = make(blocked=True)
    admitted = asyncio.Event()
    caller = h.infer(ready([1.0]), Call(wait_for_room=True, admitted=admitted))
    await h.batches(1)
    assert admitted.is_set()
    h.model.release()
    np.testing.assert_array_equal(await logits(caller), expected_rows([1.0]))


async def test_waiting_for_room_ends_at_the_deadline(make: MakeHarness) -> None:
    h = make(max_batch_size=1, max_queue_size=2, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    first, second = h.submit([2.0]), h.submit([3.0])
    await h.queued(2)
    admitted = asyncio.Event()
    call = Call(deadline=h.clock.now + 5, wait_for_room=True, admitted=admitted)
    waiter = h.infer(ready([4.0, 5.0]), call)
    await h.all_started()
    await settle()
    assert not waiter.done()

    h.clock.advance(5)
    # One place frees: not room enough for two rows, and the waiter, woken, finds its deadline
    # passed.
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    error = await failure(waiter)
    assert isinstance(error, DeadlineExpired)
    assert error.message == "deadline exceeded while waiting for room in the queue"
    assert not admitted.is_set()
    assert h.batcher.queued == 1

    h.model.release()
    np.testing.assert_array_equal(await logits(second), expected_rows([3.0]))
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    assert h.model.batches == [[1.0], [3.0]]


async def test_rows_being_made_hold_their_places_in_the_queue(make: MakeHarness) -> None:
    h = make(max_queue_size=2)
    gate = asyncio.Event()
    admitted = asyncio.Event()
    work = RecordedWork([1.0, 2.0], gate=gate)
    being_made = h.infer(work, Call(admitted=admitted))
    await until(lambda: work.made_async == 1, "the rows to be being made")
    # Admitted before its tensors exist: its rows count against the bound already.
    assert admitted.is_set()
    assert h.batcher.queued == 2
    with pytest.raises(ResourceExhausted, match=r"server busy: 2 rows queued \(max_queue_size 2\)"):
        await h.batcher.infer(ready([3.0]))

    gate.set()
    np.testing.assert_array_equal(await logits(being_made), expected_rows([1.0, 2.0]))
    assert h.model.batches == [[1.0, 2.0]]
    assert h.batcher.queued == 0
    # The places are free again.
    np.testing.assert_array_equal(await logits(h.submit([3.0, 4.0])), expected_rows([3.0, 4.0]))


async def test_cancelling_a_request_being_made_frees_its_places(make: MakeHarness) -> None:
    h = make(max_queue_size=2)
    work = RecordedWork([1.0, 2.0], gate=asyncio.Event())  # never opened
    doomed = h.infer(work)
    await until(lambda: work.made_async == 1, "the rows to be being made")
    assert h.batcher.queued == 2
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert h.batcher.queued == 0
    # Would be "server busy" if the cancelled places still counted.
    np.testing.assert_array_equal(await logits(h.submit([3.0, 4.0])), expected_rows([3.0, 4.0]))
    assert h.model.batches == [[3.0, 4.0]]
    assert h.batcher.queued == 0


async def test_a_bad_image_made_off_the_loop_reaches_the_caller_and_frees_its_places(
    make: MakeHarness,
) -> None:
    h = make(max_queue_size=2)
    bad = ImageError(1, "truncated")
    work = RecordedWork([1.0, 2.0], error=bad)
    with pytest.raises(ImageError) as raised:
        await h.batcher.infer(work)
    assert raised.value is bad
    assert work.made_async == 1 and work.made_on == []
    assert h.batcher.queued == 0 and h.model.batches == []
    np.testing.assert_array_equal(await logits(h.submit([3.0, 4.0])), expected_rows([3.0, 4.0]))


# ---------------------------------------------------------------------------------------------
# Deadlines and cancellation


async def test_expired_items_are_dropped_before_the_model_runs(make: MakeHarness) -> None:
    h = make(max_batch_size=8, blocked=True)
    now = h.clock.now
    running = h.submit([1.0], deadline=now + 1)  # taken while still live
    await h.batches(1)
    soon = h.submit([2.0], deadline=now + 5)
    exact = h.submit([3.0], deadline=now + 7)  # expires exactly at the new time
    later = h.submit([4.0, 5.0], deadline=now + 60)
    never = h.submit([6.0], deadline=None)
    await h.queued(5)

    h.clock.advance(7)
    h.model.release()
    for task in (soon, exact):
        error = await failure(task)
        assert isinstance(error, DeadlineExpired)
        assert error.status_code is grpc.StatusCode.DEADLINE_EXCEEDED
    # Running past its deadline is not this batcher's concern: only queued items expire.
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(later), expected_rows([4.0, 5.0]))
    np.testing.assert_array_equal(await logits(never), expected_rows([6.0]))
    assert h.model.batches == [[1.0], [4.0, 5.0, 6.0]]
    assert h.batcher.stats.dropped == 2
    assert h.batcher.stats.rows == 4


async def test_already_expired_request_never_reaches_an_idle_model(make: MakeHarness) -> None:
    h = make()
    error = await failure(h.submit([1.0], deadline=h.clock.now - 0.5))
    assert isinstance(error, DeadlineExpired)
    assert error.message == "deadline exceeded before the request was admitted"
    assert h.model.batches == []
    # Refused at admission: it never held a place, so there was nothing to drop.
    assert h.batcher.stats.dropped == 0 and h.batcher.queued == 0
    # ...and the batcher goes on serving.
    np.testing.assert_array_equal(await logits(h.submit([2.0])), expected_rows([2.0]))


async def test_request_whose_tail_expires_fails_as_a_whole(make: MakeHarness) -> None:
    h = make(max_batch_size=2, blocked=True)
    split = h.submit([1.0, 2.0, 3.0], deadline=h.clock.now + 10)
    other = h.submit([4.0])
    await h.batches(1)  # images 1 and 2 are running, 3 is queued
    await h.queued(2)
    h.clock.advance(10)
    h.model.release()
    assert isinstance(await failure(split), DeadlineExpired)
    np.testing.assert_array_equal(await logits(other), expected_rows([4.0]))
    assert h.model.batches == [[1.0, 2.0], [4.0]]


async def test_cancelled_callers_items_are_dropped(make: MakeHarness) -> None:
    h = make(max_batch_size=8, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    before = h.submit([2.0, 3.0])
    cancelled = h.submit([4.0, 5.0, 6.0])
    after = h.submit([7.0])
    await h.queued(6)

    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    h.model.release()
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(before), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await logits(after), expected_rows([7.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0, 7.0]]  # the model never saw 4, 5, 6
    assert h.batcher.stats.dropped == 1  # one chunk: the cancelled request's three rows
    assert h.batcher.stats.rows == 4


async def test_cancelling_a_partly_running_request_drops_the_rest(make: MakeHarness) -> None:
    h = make(max_batch_size=2, blocked=True)
    split = h.submit([1.0, 2.0, 3.0])
    other = h.submit([4.0])
    await h.batches(1)  # 1 and 2 are running; 3 and 4 queued
    await h.queued(2)
    split.cancel()
    with pytest.raises(asyncio.CancelledError):
        await split
    h.model.release()
    np.testing.assert_array_equal(await logits(other), expected_rows([4.0]))
    # The running batch finished quietly (its rows went nowhere); image 3 never ran.
    assert h.model.batches == [[1.0, 2.0], [4.0]]
    assert h.batcher.stats.dropped == 1


async def test_a_cancelled_requests_places_are_freed_only_once(make: MakeHarness) -> None:
    h = make(max_batch_size=1, max_queue_size=2, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    doomed = h.submit([2.0])
    await h.queued(1)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert h.batcher.queued == 0
    h.model.release()
    await result(running)
    await until(lambda: h.batcher.stats.dropped == 1, "the cancelled chunk to be dropped")
    assert h.batcher.queued == 0  # is -1


# ---------------------------------------------------------------------------------------------
# Model failures


async def test_model_error_fails_only_that_batch(
    make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(max_batch_size=2, blocked=True, respond=fail_on(3.0))
    running = h.submit([1.0])
    await h.batches(1)
    victim = h.submit([2.0])
    poisoned = h.submit([3.0])
    survivors = [h.submit([4.0]), h.submit([5.0])]
    await h.queued(4)

    with caplog.at_level(logging.ERROR, logger="serve.batching"):
        h.model.release()
        for task in (victim, poisoned):
            error = await failure(task)
            assert isinstance(error, BatchError) and isinstance(error, TorchgrpcError)
            assert "cannot digest 3.0" in str(error)
        np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
        np.testing.assert_array_equal(await logits(survivors[0]), expected_rows([4.0]))
        np.testing.assert_array_equal(await logits(survivors[1]), expected_rows([5.0]))

    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0, 5.0]]
    assert any("model failed on a batch of 2" in r.getMessage() for r in caplog.records)
    stats = h.batcher.stats
    assert (stats.batches, stats.rows, stats.dropped) == (2, 3, 0)  # the failure isn't counted
    # The batcher keeps serving.
    np.testing.assert_array_equal(await logits(h.submit([6.0])), expected_rows([6.0]))


@pytest.mark.parametrize("extra", [-1, 1], ids=["missing-row", "extra-row"])
async def test_wrong_number_of_rows_is_a_batch_error(make: MakeHarness, extra: int) -> None:
    def respond(inputs: Mapping[str, np.ndarray]) -> Tensors:
        outputs = echo(inputs)
        if 3.0 not in markers_of(inputs["x"]):
            return outputs
        y = outputs["y"]
        return {"y": y[:-1] if extra < 0 else np.concatenate([y, y[:1]])}

    h = make(max_batch_size=2, blocked=True, respond=respond)
    running = h.submit([1.0])
    await h.batches(1)
    pair = [h.submit([2.0]), h.submit([3.0])]
    survivor = h.submit([4.0])
    await h.queued(3)
    h.model.release()
    for task in pair:
        error = await failure(task)
        assert isinstance(error, BatchError)
        assert f"model returned {2 + extra} rows of 'y' for 2" in str(error)
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(survivor), expected_rows([4.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0]]


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (None, "model failed: "),  # not a mapping at all
        ({"y": [1.0]}, "model failed: model returned no rows of 'y' for 1"),  # not an array
        ({"y": np.array(1.0)}, "model failed: model returned no rows of 'y' for 1"),  # 0-d
    ],
    ids=["none", "list", "scalar"],
)
async def test_model_returning_garbage_is_a_batch_error(
    make: MakeHarness, garbage: object, message: str
) -> None:
    def respond(inputs: Mapping[str, np.ndarray]) -> Any:
        return garbage

    h = make(respond=respond)
    error = await failure(h.submit([1.0]))
    assert isinstance(error, BatchError) and str(error).startswith(message)


def no_outputs(inputs: Mapping[str, np.ndarray]) -> Tensors:
    """A model that answers small markers with no outputs at all."""
    return {} if max(markers_of(inputs["x"])) < 10 else echo(inputs)


def width_follows_the_batch(inputs: Mapping[str, np.ndarray]) -> Tensors:
    """A model whose output for small markers is as wide as the batch is long (as if padded to
    the batch's longest): pieces of one request from two batches can't be joined."""
    rows = len(inputs["x"])
    if max(markers_of(inputs["x"])) < 10:
        return {"y": np.zeros((rows, rows), dtype=np.float32)}
    return echo(inputs)


@pytest.mark.parametrize("respond", [no_outputs, width_follows_the_batch])
async def test_a_failure_while_answering_fails_the_request_not_the_worker(
    make: MakeHarness, respond: RunBatch
) -> None:
    h = make(max_batch_size=2, respond=respond)
    caller = h.submit([1.0, 2.0, 3.0])
    (worker,) = [t for t in asyncio.all_tasks() if t.get_name() == "batcher-0" and not t.done()]
    await asyncio.wait([caller, worker], timeout=HANG_GUARD, return_when=asyncio.FIRST_COMPLETED)
    assert not worker.done(), f"the worker ended: {worker.exception()!r}"
    assert isinstance(await failure(caller), BatchError)
    np.testing.assert_array_equal(await logits(h.submit([20.0])), expected_rows([20.0]))


# ---------------------------------------------------------------------------------------------
# Statistics


async def test_statistics_count_requests_rows_and_batches(make: MakeHarness) -> None:
    h = make(max_batch_size=4, blocked=True, respond=fail_on(9.0))
    first = h.submit([1.0])
    await h.batches(1)
    pair = h.submit([2.0, 3.0])
    single = h.submit([4.0])
    expired = h.submit([5.0], deadline=h.clock.now + 1)
    await h.queued(4)
    h.clock.advance(1)
    h.model.release()
    np.testing.assert_array_equal(await logits(first), expected_rows([1.0]))
    np.testing.assert_array_equal(await logits(pair), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await logits(single), expected_rows([4.0]))
    assert isinstance(await failure(expired), DeadlineExpired)
    assert isinstance(await failure(h.submit([9.0])), BatchError)
    five = [6.0, 7.0, 8.0, 10.0, 11.0]
    np.testing.assert_array_equal(await logits(h.submit(five)), expected_rows(five))
    assert h.model.batches == [[1.0], [2.0, 3.0, 4.0], [9.0], [6.0, 7.0, 8.0, 10.0], [11.0]]

    statistics = h.batcher.statistics
    assert (statistics.success.count, statistics.fail.count) == (4, 2)
    assert statistics.inference_count == 1 + 2 + 1 + 5  # rows of the successful requests
    # Executions: the batches answered (1, 3, 4 and 1 rows); the failed one is not counted.
    assert statistics.execution_count == 4
    assert {size: times.compute_infer.count for size, times in statistics.batches.items()} == {
        1: 2,
        3: 1,
        4: 1,
    }
    # Every successful request is charged its queue time and its batches' stage times.
    assert statistics.queue.count == statistics.success.count
    assert statistics.compute_infer.count == statistics.success.count
    assert statistics.decode.count == statistics.success.count
    assert statistics.success.ns >= statistics.queue.ns  # a request's time includes its queueing


# ---------------------------------------------------------------------------------------------
# Shutting down


async def test_close_fails_queued_requests_and_ends_the_workers(
    make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = make(max_batch_size=8, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    queued = [h.submit([2.0, 3.0]), h.submit([4.0])]
    await h.queued(3)

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        h.model.release()
        await h.batcher.close()
        for task in queued:
            error = await failure(task)
            assert isinstance(error, ServerUnavailable)
            assert "shutting down" in str(error)
        # The request that was running is test_close_settles_the_running_batch's business.
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        gc.collect()
    assert caught == []
    assert [r for r in caplog.records if r.name.startswith(("asyncio", "serve"))] == []

    assert h.model.batches == [[1.0]]  # the queued images never ran
    assert h.batcher.queued == 0
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("batcher-")]
    assert not any(thread.is_alive() for thread in h.model.threads)


async def test_close_of_an_idle_batcher_is_quiet(make: MakeHarness) -> None:
    h = make(instances=2)
    np.testing.assert_array_equal(await logits(h.submit([1.0])), expected_rows([1.0]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await h.batcher.close()
    assert caught == []
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("batcher-")]
    assert not any(thread.is_alive() for m in h.models for thread in m.threads)


async def test_close_before_start_fails_what_was_queued(make: MakeHarness) -> None:
    h = make(start=False)
    waiting = h.submit([1.0, 2.0])
    await h.queued(2)
    await h.batcher.close()
    error = await failure(waiting)
    assert isinstance(error, ServerUnavailable) and "shutting down" in str(error)
    assert h.model.batches == []


async def test_close_settles_the_running_batch(make: MakeHarness) -> None:
    h = make(blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    h.model.release()  # the model can finish: close() must not leave its caller hanging
    await h.batcher.close()
    try:
        await settle()
        assert running.done(), "the running request was left hanging"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_close_settles_a_batch_waiting_to_fill(make: MakeHarness) -> None:
    h = make(max_batch_size=2, max_queue_delay=30.0)
    waiting = h.submit([1.0])
    await h.all_started()
    await h.queued(0)  # taken from the queue, waiting for company
    await h.batcher.close()
    try:
        await settle()
        assert waiting.done(), "the waiting request was left hanging"
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)


async def test_close_wakes_requests_waiting_for_room(make: MakeHarness) -> None:
    h = make(max_queue_size=1, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    queued = h.submit([2.0])
    await h.queued(1)
    admitted = asyncio.Event()
    waiter = h.infer(ready([3.0]), Call(wait_for_room=True, admitted=admitted))
    await h.all_started()
    await settle()
    assert not waiter.done()

    # close() wakes the waiter before anything else; it then waits for the blocked model.
    closing = asyncio.create_task(h.batcher.close())
    error = await failure(waiter)
    assert isinstance(error, ServerUnavailable)
    assert error.message == "the server is shutting down"
    assert not admitted.is_set()
    error = await failure(queued)
    assert isinstance(error, ServerUnavailable) and error.message == "the server is shutting down"
    h.model.release()
    await asyncio.wait_for(closing, HANG_GUARD)
    await asyncio.gather(running, return_exceptions=True)
    assert h.model.batches == [[1.0]]


async def test_close_answers_a_request_still_being_made(make: MakeHarness) -> None:
    h = make()
    gate = asyncio.Event()
    work = RecordedWork([1.0, 2.0], gate=gate)
    being_made = h.infer(work)
    await until(lambda: work.made_async == 1, "the rows to be being made")
    await h.batcher.close()
    gate.set()
    error = await failure(being_made)
    assert isinstance(error, ServerUnavailable) and "shutting down" in error.message
    assert h.model.batches == [] and h.batcher.queued == 0


# ---------------------------------------------------------------------------------------------
# The solo instance: every core for a batch that has the machine to itself


async def test_a_lone_batch_runs_on_the_solo_instance(make: MakeHarness) -> None:
    h = make(instances=2, solo=True)
    # Two rows: made off the loop and queued, then run by a worker on the solo instance.
    assert [row[0] for row in await logits(h.submit([1.0, 2.0]))] == [1.0, 2.0]
    assert h.solo is not None
    assert h.solo.batches == [[1.0, 2.0]]
    assert all(model.batches == [] for model in h.models)
    assert (h.batcher.stats.solo, h.batcher.stats.one_hop) == (1, 0)


async def test_while_a_batch_runs_the_next_goes_to_a_per_core_instance(make: MakeHarness) -> None:
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    first = h.submit([1.0, 1.5])
    await h.batches(1, h.solo)  # alone: the solo instance took it, and is now busy
    second = h.submit([2.0])
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the second batch to start")
    assert [m.batches for m in h.models] in ([[[2.0]], []], [[], [[2.0]]])
    assert h.solo.batches == [[1.0, 1.5]]  # never two batches on the solo instance at once
    h.release_all()
    assert [row[0] for row in await logits(first)] == [1.0, 1.5]
    assert [row[0] for row in await logits(second)] == [2.0]


# ---------------------------------------------------------------------------------------------
# One hop: on an idle machine, a single row is made and run on the solo instance's thread


async def test_one_hop_makes_and_runs_on_the_solo_thread(make: MakeHarness) -> None:
    h = make(instances=2, solo=True)
    assert h.solo is not None
    work = RecordedWork([3.0])
    outputs = await result(h.infer(work))
    np.testing.assert_array_equal(outputs["y"], expected_rows([3.0]))
    # One hop: the image was made on the very thread that ran the model.
    assert work.made_on == h.solo.threads and work.made_async == 0
    assert work.made_on[0] is not threading.current_thread()
    assert all(model.batches == [] for model in h.models)
    stats = h.batcher.stats
    assert (stats.one_hop, stats.solo, stats.batches, stats.rows) == (1, 1, 1, 1)
    statistics = h.batcher.statistics
    assert (statistics.success.count, statistics.inference_count) == (1, 1)
    assert (statistics.queue.count, statistics.queue.ns) == (1, 0)  # never queued
    # Made on the model's thread: making the inputs was the batch's input stage.
    assert statistics.decode.count == 1 and statistics.decode.ns == statistics.compute_input.ns
    assert statistics.execution_count == 1 and statistics.batches[1].compute_infer.count == 1
    assert h.batcher.queued == 0


async def test_one_hop_declines_without_a_solo_instance(make: MakeHarness) -> None:
    h = make(instances=1)
    work = RecordedWork([1.0])
    np.testing.assert_array_equal(await logits(h.infer(work)), expected_rows([1.0]))
    assert work.made_on == [] and work.made_async == 1  # made off the loop, then queued
    assert h.model.batches == [[1.0]]
    assert h.batcher.stats.one_hop == 0


async def test_one_hop_declines_while_a_batch_runs(make: MakeHarness) -> None:
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    running = h.submit([1.0, 2.0])
    await h.batches(1, h.solo)
    work = RecordedWork([3.0])
    lone = h.infer(work)
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the lone batch to start")
    assert work.made_on == [] and work.made_async == 1
    assert h.solo.batches == [[1.0, 2.0]]
    h.release_all()
    np.testing.assert_array_equal(await logits(running), expected_rows([1.0, 2.0]))
    np.testing.assert_array_equal(await logits(lone), expected_rows([3.0]))
    assert h.batcher.stats.one_hop == 0


async def test_one_hop_declines_while_rows_are_queued(make: MakeHarness) -> None:
    h = make(instances=1, solo=True, start=False)  # no workers: the queue stays as it is
    assert h.solo is not None
    queued = h.submit([1.0, 2.0])
    await h.queued(2)
    work = RecordedWork([3.0])
    lone = h.infer(work)
    await h.queued(3)
    assert work.made_on == [] and work.made_async == 1
    h.batcher.start()
    np.testing.assert_array_equal(await logits(queued), expected_rows([1.0, 2.0]))
    np.testing.assert_array_equal(await logits(lone), expected_rows([3.0]))
    assert h.solo.batches == [[1.0, 2.0, 3.0]]  # one batch, by a worker, on the solo instance
    assert h.batcher.stats.one_hop == 0


async def test_one_hop_declines_while_rows_are_being_made(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None
    gate = asyncio.Event()
    holder_work = RecordedWork([1.0, 2.0], gate=gate)
    holder = h.infer(holder_work)
    await until(lambda: holder_work.made_async == 1, "the holder's rows to be being made")
    work = RecordedWork([3.0])
    np.testing.assert_array_equal(await logits(h.infer(work)), expected_rows([3.0]))
    assert work.made_on == [] and work.made_async == 1
    gate.set()
    np.testing.assert_array_equal(await logits(holder), expected_rows([1.0, 2.0]))
    assert h.solo.batches == [[3.0], [1.0, 2.0]]
    assert h.batcher.stats.one_hop == 0


async def test_one_hop_declines_once_closed(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None
    await h.batcher.close()
    work = RecordedWork([1.0])
    with pytest.raises(ServerUnavailable, match="shutting down"):
        await h.batcher.infer(work)
    assert work.made_on == [] and work.made_async == 0
    assert h.solo.batches == []


async def solo_taken_by_one_hop(
    make: MakeHarness,
) -> tuple[Harness, FakeModel, asyncio.Task[Tensors]]:
    """Two blocked per-core instances and a solo one, running marker 1 in one hop."""
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    alone = h.infer(RecordedWork([1.0]))
    await h.batches(1, h.solo)
    return h, h.solo, alone


async def next_batch_goes_to_a_per_core_instance(
    h: Harness, solo: FakeModel, marker: float
) -> None:
    """Sends ``marker``, checks it was made off the loop and a per-core instance took it while
    the solo one is busy, and releases every instance."""
    work = RecordedWork([marker])
    task = h.infer(work)
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the next batch to start")
    assert solo.batches == [[1.0]]
    assert work.made_on == [] and work.made_async == 1
    h.release_all()
    assert [row[0] for row in await logits(task)] == [marker]


async def test_while_one_hop_runs_a_queued_batch_uses_a_per_core_instance(
    make: MakeHarness,
) -> None:
    h, solo, alone = await solo_taken_by_one_hop(make)
    await next_batch_goes_to_a_per_core_instance(h, solo, 2.0)
    assert [row[0] for row in await logits(alone)] == [1.0]


async def test_one_hop_holds_the_solo_instance_until_its_thread_is_done(
    make: MakeHarness,
) -> None:
    """A caller that gives up does not free the solo instance while its batch still runs there."""
    h, solo, alone = await solo_taken_by_one_hop(make)
    alone.cancel()
    await asyncio.gather(alone, return_exceptions=True)
    await next_batch_goes_to_a_per_core_instance(h, solo, 3.0)  # still busy
    await until(lambda: h.batcher.idle, "the solo batch to end")
    work = RecordedWork([4.0])
    np.testing.assert_array_equal(await logits(h.infer(work)), expected_rows([4.0]))
    assert work.made_on == [solo.threads[0]] and work.made_async == 0  # free again
    assert solo.batches == [[1.0], [4.0]]
    assert h.batcher.stats.one_hop == 1  # the abandoned batch is not counted


async def test_one_hop_passes_make_errors_through(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None
    bad = ImageError(0, "not an image")
    work = RecordedWork([1.0], error=bad)
    with pytest.raises(ImageError, match="image 0: not an image") as raised:
        await h.batcher.infer(work)
    assert raised.value is bad
    assert [thread.name for thread in work.made_on] == ["model-solo_0"]
    assert work.made_async == 0 and h.solo.batches == []
    assert h.batcher.statistics.fail.count == 1 and h.batcher.queued == 0
    # The instance is free again for the next request.
    work = RecordedWork([1.0])
    np.testing.assert_array_equal(await logits(h.infer(work)), expected_rows([1.0]))
    assert work.made_on == h.solo.threads and work.made_async == 0


async def test_one_hop_turns_model_failures_into_batch_errors(
    make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(inputs: Mapping[str, np.ndarray]) -> Tensors:
        raise RuntimeError("out of cheese")

    h = make(instances=1, solo=True, respond=broken)
    assert h.solo is not None
    work = RecordedWork([1.0])
    with (
        caplog.at_level(logging.ERROR, logger="serve.batching"),
        pytest.raises(BatchError, match="out of cheese"),
    ):
        await h.batcher.infer(work)
    assert "model failed on a batch of 1" in caplog.text
    assert work.made_on == h.solo.threads and work.made_async == 0  # it was the one-hop path


async def test_one_hop_refuses_an_expired_deadline(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None
    work = RecordedWork([1.0])
    with pytest.raises(DeadlineExpired, match="before the request was admitted"):
        await h.batcher.infer(work, Call(deadline=h.clock.now))
    assert work.made_on == [] and work.made_async == 0
    assert h.solo.batches == [] and h.batcher.queued == 0
    outputs = await h.batcher.infer(work, Call(deadline=h.clock.now + 1))
    np.testing.assert_array_equal(outputs["y"], expected_rows([1.0]))
    assert work.made_on == h.solo.threads and work.made_async == 0
