"""The dynamic batcher, driven by events rather than time.

The model instances are plain functions run in the batcher's executor threads: each records the
batches it receives (one marker value per image: every image is an array filled with its marker) and
blocks on a ``threading.Event`` while a test needs it busy. Deadlines use a fake clock. Nothing here
sleeps to "wait long enough": tests wait for a condition, with a generous hang guard only.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest

from serve.batching import Batcher, BatchError, BatchingConfig, DeadlineExpired
from serve.errors import InvalidArgument, ResourceExhausted, ServerUnavailable, TorchgrpcError

HANG_GUARD = 10.0  # seconds; only ever reached when something is broken
SHAPE = (3, 2, 2)  # one tiny "image"


# ---------------------------------------------------------------------------------------------
# Fakes and helpers


def image(marker: float) -> np.ndarray:
    """An image whose every value is ``marker``: its identity survives stacking into a batch."""
    return np.full(SHAPE, marker, dtype=np.float32)


def images(markers: Sequence[float]) -> list[np.ndarray]:
    return [image(marker) for marker in markers]


def markers_of(inputs: np.ndarray) -> list[float]:
    return [float(value) for value in inputs.reshape(len(inputs), -1).mean(axis=1)]


def echo_logits(inputs: np.ndarray) -> np.ndarray:
    """Logits whose row encodes its input: ``[marker, -marker, 2 * marker]``."""
    means = inputs.reshape(len(inputs), -1).mean(axis=1)
    return np.stack([means, -means, 2 * means], axis=1).astype(np.float32)


def expected_rows(markers: Sequence[float]) -> np.ndarray:
    return echo_logits(np.stack(images(markers)))


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

    def __init__(
        self,
        *,
        blocked: bool = False,
        respond: Callable[[np.ndarray], np.ndarray] = echo_logits,
    ) -> None:
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self.respond = respond
        self.batches: list[list[float]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.threads: list[threading.Thread] = []
        self.inside = 0  # batches being run right now
        self.max_inside = 0
        self._lock = threading.Lock()

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(markers_of(inputs))
            self.shapes.append(inputs.shape)
            self.threads.append(threading.current_thread())
            self.inside += 1
            self.max_inside = max(self.max_inside, self.inside)
        try:
            if not self.gate.wait(HANG_GUARD):
                raise RuntimeError("the test never released the fake model")
            return self.respond(inputs)
        finally:
            with self._lock:
                self.inside -= 1

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def release(self) -> None:
        self.gate.set()


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


async def result(task: asyncio.Task[np.ndarray]) -> np.ndarray:
    return await asyncio.wait_for(task, HANG_GUARD)


async def failure(task: asyncio.Task[np.ndarray]) -> BaseException:
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
    tasks: list[asyncio.Task[np.ndarray]] = field(default_factory=list)
    started: int = 0  # caller tasks that have run far enough to queue their images

    @property
    def model(self) -> FakeModel:
        return self.models[0]

    def submit(
        self, markers: Sequence[float], deadline: float | None = None
    ) -> asyncio.Task[np.ndarray]:
        """A caller's request, as its own task (it enqueues when the loop next runs it)."""

        async def call() -> np.ndarray:
            self.started += 1
            # submit() queues the images before its first await: once ``started`` counts this
            # caller, its images are in the queue (or already taken by a worker).
            return await self.batcher.submit(images(markers), deadline)

        task = asyncio.create_task(call())
        self.tasks.append(task)
        return task

    async def all_started(self) -> None:
        await until(lambda: self.started == len(self.tasks), "every caller to queue its images")

    async def queued(self, count: int) -> None:
        await until(lambda: self.batcher.queued == count, f"{count} images queued")

    async def batches(self, count: int, model: FakeModel | None = None) -> None:
        watched = model or self.model
        await until(lambda: len(watched.batches) >= count, f"{count} batches started")
        assert len(watched.batches) == count, watched.batches


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
        respond: Callable[[np.ndarray], np.ndarray] = echo_logits,
        solo: bool = False,
        **config: float,
    ) -> Harness:
        models = [FakeModel(blocked=blocked, respond=respond) for _ in range(instances)]
        solo_model = FakeModel(blocked=blocked, respond=respond) if solo else None
        clock = FakeClock()
        batcher = Batcher(
            models,
            BatchingConfig(**config),
            solo=solo_model,
            clock=clock,  # type: ignore[arg-type]
        )
        if start:
            batcher.start()
        harness = Harness(batcher, models, clock, solo_model)
        made.append(harness)
        return harness

    yield build

    for harness in made:
        for model in [*harness.models, *([harness.solo] if harness.solo else [])]:
            model.release()
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
def test_config_rejects_bad_values(changes: dict[str, float], field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        BatchingConfig(**changes)  # type: ignore[arg-type]


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
    np.testing.assert_array_equal(await result(caller), expected_rows([7.0]))
    assert h.batcher.stats.batches == 1 and h.batcher.stats.images == 1
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
        np.testing.assert_array_equal(await result(callers[name]), expected_rows(markers))
    np.testing.assert_array_equal(await result(first), expected_rows([1.0]))

    assert h.model.batches == [
        [1.0],
        [20.0, 21.0, 30.0, 31.0],
        [32.0, 40.0, 50.0, 51.0],
        [52.0, 53.0],
    ]
    assert h.model.sizes[1:] == [4, 4, 2]
    stats = h.batcher.stats
    assert (stats.batches, stats.images, stats.dropped) == (4, 11, 0)
    assert stats.batch_sizes == {1: 1, 4: 2, 2: 1}
    assert h.batcher.queued == 0


async def test_one_request_larger_than_a_batch_is_split_and_reassembled(
    make: MakeHarness,
) -> None:
    h = make(max_batch_size=3)
    markers = [float(i) for i in range(1, 9)]
    rows = await asyncio.wait_for(h.batcher.submit(images(markers), None), HANG_GUARD)
    np.testing.assert_array_equal(rows, expected_rows(markers))
    assert [m for batch in h.model.batches for m in batch] == markers
    assert max(h.model.sizes) <= 3


async def test_callers_sharing_a_batch_get_only_their_own_rows(make: MakeHarness) -> None:
    h = make(max_batch_size=8, blocked=True)
    first = h.submit([0.5])
    await h.batches(1)
    callers = {float(c): h.submit([c * 10.0 + j for j in range(c)]) for c in range(1, 5)}
    await h.queued(10)
    h.model.release()
    for c, task in callers.items():
        rows = await result(task)
        assert rows.shape == (int(c), 3)
        np.testing.assert_array_equal(rows[:, 0], [c * 10.0 + j for j in range(int(c))])
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
    np.testing.assert_array_equal(await result(first), expected_rows([1.0]))
    np.testing.assert_array_equal(await result(second), expected_rows([2.0]))
    assert h.model.batches == [[1.0, 2.0]]
    assert h.batcher.stats.batch_sizes == {2: 1}


async def test_max_queue_delay_takes_only_what_fits(make: MakeHarness) -> None:
    h = make(max_batch_size=3, max_queue_delay=30.0)
    first = h.submit([1.0])
    await h.all_started()
    await h.queued(0)  # taken, waiting for company
    # Four more images arrive: two fill the waiting batch, the other two queue for the next.
    second = h.submit([2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(await result(first), expected_rows([1.0]))
    await h.batches(1)
    assert h.model.batches == [[1.0, 2.0, 3.0]]
    third = h.submit([6.0])  # completes the second batch (4, 5, 6)
    np.testing.assert_array_equal(await result(second), expected_rows([2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(await result(third), expected_rows([6.0]))
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

    for model in h.models:
        model.release()
    np.testing.assert_array_equal(await result(first), expected_rows([1.0, 2.0]))
    np.testing.assert_array_equal(await result(second), expected_rows([3.0]))
    assert h.batcher.stats.batches == 2


async def test_an_instance_never_runs_two_batches_at_once(make: MakeHarness) -> None:
    h = make(max_batch_size=1, blocked=True)
    callers = [h.submit([float(i)]) for i in range(5)]
    await h.batches(1)
    await h.queued(4)
    h.model.release()
    for i, task in enumerate(callers):
        np.testing.assert_array_equal(await result(task), expected_rows([float(i)]))
    assert h.model.max_inside == 1
    assert h.model.sizes == [1] * 5
    assert len({thread.name for thread in h.model.threads}) == 1


# ---------------------------------------------------------------------------------------------
# The bounded queue


async def test_full_queue_rejects_new_requests(make: MakeHarness) -> None:
    h = make(max_batch_size=8, max_queue_size=3, blocked=True)
    running = h.submit([1.0])  # taken by the worker: it no longer counts as queued
    await h.batches(1)
    waiting_b = h.submit([2.0, 3.0])
    await h.queued(2)

    with pytest.raises(ResourceExhausted, match="max_queue_size") as rejected:
        await h.batcher.submit(images([4.0, 5.0]), None)  # 2 + 2 > 3
    assert rejected.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "3" in rejected.value.message
    assert h.batcher.queued == 2  # a rejected request queues nothing

    waiting_c = h.submit([6.0])  # exactly fills the queue
    await h.queued(3)
    with pytest.raises(ResourceExhausted, match="max_queue_size"):
        await h.batcher.submit(images([7.0]), None)

    h.model.release()
    np.testing.assert_array_equal(await result(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await result(waiting_b), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await result(waiting_c), expected_rows([6.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0, 6.0]]  # the rejected never reached the model

    # Once drained, the queue accepts again.
    np.testing.assert_array_equal(
        await asyncio.wait_for(h.batcher.submit(images([8.0]), None), HANG_GUARD),
        expected_rows([8.0]),
    )


async def test_request_larger_than_the_queue_is_rejected(make: MakeHarness) -> None:
    """Retrying can't help such a request: it is the caller's to split, INVALID_ARGUMENT."""
    h = make(max_queue_size=2)
    with pytest.raises(InvalidArgument, match=r"has 3 images, more than max_queue_size \(2\)"):
        await h.batcher.submit(images([1.0, 2.0, 3.0]), None)
    assert h.model.batches == [] and h.batcher.queued == 0


async def test_cancelled_requests_free_their_queue_places_at_once(make: MakeHarness) -> None:
    h = make(max_batch_size=1, max_queue_size=2, blocked=True)
    running = h.submit([1.0])
    await h.batches(1)
    doomed = h.submit([2.0, 3.0])
    await h.queued(2)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    assert h.batcher.queued == 0
    later = h.submit([4.0, 5.0])  # would be "server busy" if the cancelled places still counted
    await h.queued(2)
    h.model.release()
    assert [row[0] for row in await later] == [4.0, 5.0]
    await running
    assert h.model.batches == [[1.0], [4.0], [5.0]]


async def test_submit_after_close_is_unavailable(make: MakeHarness) -> None:
    h = make()
    await h.batcher.close()
    with pytest.raises(ServerUnavailable, match="shutting down"):
        await h.batcher.submit(images([1.0]), None)


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
    np.testing.assert_array_equal(await result(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await result(later), expected_rows([4.0, 5.0]))
    np.testing.assert_array_equal(await result(never), expected_rows([6.0]))
    assert h.model.batches == [[1.0], [4.0, 5.0, 6.0]]
    assert h.batcher.stats.dropped == 2
    assert h.batcher.stats.images == 4


async def test_already_expired_request_never_reaches_an_idle_model(make: MakeHarness) -> None:
    h = make()
    error = await failure(h.submit([1.0], deadline=h.clock.now - 0.5))
    assert isinstance(error, DeadlineExpired)
    assert h.model.batches == []
    assert h.batcher.stats.dropped == 1
    # ...and the batcher goes on serving.
    np.testing.assert_array_equal(await result(h.submit([2.0])), expected_rows([2.0]))


async def test_request_whose_tail_expires_fails_as_a_whole(make: MakeHarness) -> None:
    h = make(max_batch_size=2, blocked=True)
    split = h.submit([1.0, 2.0, 3.0], deadline=h.clock.now + 10)
    other = h.submit([4.0])
    await h.batches(1)  # images 1 and 2 are running, 3 is queued
    await h.queued(2)
    h.clock.advance(10)
    h.model.release()
    assert isinstance(await failure(split), DeadlineExpired)
    np.testing.assert_array_equal(await result(other), expected_rows([4.0]))
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
    np.testing.assert_array_equal(await result(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await result(before), expected_rows([2.0, 3.0]))
    np.testing.assert_array_equal(await result(after), expected_rows([7.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0, 7.0]]  # the model never saw 4, 5, 6
    assert h.batcher.stats.dropped == 3
    assert h.batcher.stats.images == 4


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
    np.testing.assert_array_equal(await result(other), expected_rows([4.0]))
    # The running batch finished quietly (its rows went nowhere); image 3 never ran.
    assert h.model.batches == [[1.0, 2.0], [4.0]]
    assert h.batcher.stats.dropped == 1


# ---------------------------------------------------------------------------------------------
# Model failures


def fail_on(poison: float) -> Callable[[np.ndarray], np.ndarray]:
    def respond(inputs: np.ndarray) -> np.ndarray:
        if poison in markers_of(inputs):
            raise ValueError(f"cannot digest {poison}")
        return echo_logits(inputs)

    return respond


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
        np.testing.assert_array_equal(await result(running), expected_rows([1.0]))
        np.testing.assert_array_equal(await result(survivors[0]), expected_rows([4.0]))
        np.testing.assert_array_equal(await result(survivors[1]), expected_rows([5.0]))

    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0, 5.0]]
    assert any("model failed on a batch of 2" in r.getMessage() for r in caplog.records)
    stats = h.batcher.stats
    assert (stats.batches, stats.images, stats.dropped) == (2, 3, 0)  # the failure isn't counted
    # The batcher keeps serving.
    np.testing.assert_array_equal(await result(h.submit([6.0])), expected_rows([6.0]))


@pytest.mark.parametrize("extra", [-1, 1], ids=["missing-row", "extra-row"])
async def test_wrong_number_of_rows_is_a_batch_error(make: MakeHarness, extra: int) -> None:
    def respond(inputs: np.ndarray) -> np.ndarray:
        logits = echo_logits(inputs)
        if 3.0 not in markers_of(inputs):
            return logits
        return logits[:-1] if extra < 0 else np.concatenate([logits, logits[:1]])

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
        assert f"returned {2 + extra} rows for 2" in str(error)
    np.testing.assert_array_equal(await result(running), expected_rows([1.0]))
    np.testing.assert_array_equal(await result(survivor), expected_rows([4.0]))
    assert h.model.batches == [[1.0], [2.0, 3.0], [4.0]]


async def test_model_returning_garbage_is_a_batch_error(make: MakeHarness) -> None:
    h = make(respond=lambda inputs: None)  # not an array at all
    error = await failure(h.submit([1.0]))
    assert isinstance(error, BatchError) and "model failed" in str(error)


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
            assert isinstance(error, BatchError)
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
    rows = await result(h.submit([1.0]))
    np.testing.assert_array_equal(rows, expected_rows([1.0]))
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
    assert isinstance(error, BatchError) and "shutting down" in str(error)
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


# ---------------------------------------------------------------------------------------------
# The solo instance: every core for a batch that has the machine to itself


async def test_a_lone_batch_runs_on_the_solo_instance(make: MakeHarness) -> None:
    h = make(instances=2, solo=True)
    assert [row[0] for row in await result(h.submit([1.0, 2.0]))] == [1.0, 2.0]
    assert h.solo is not None
    assert h.solo.batches == [[1.0, 2.0]]
    assert all(model.batches == [] for model in h.models)
    assert h.batcher.stats.solo == 1


async def test_while_a_batch_runs_the_next_goes_to_a_per_core_instance(make: MakeHarness) -> None:
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    first = h.submit([1.0])
    await h.batches(1, h.solo)  # alone: the solo instance took it, and is now busy
    second = h.submit([2.0])
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the second batch to start")
    assert [m.batches for m in h.models] in ([[[2.0]], []], [[], [[2.0]]])
    assert h.solo.batches == [[1.0]]  # never two batches on the solo instance at once
    for model in [h.solo, *h.models]:
        model.release()
    assert [row[0] for row in await result(first)] == [1.0]
    assert [row[0] for row in await result(second)] == [2.0]


# ---------------------------------------------------------------------------------------------
# run_alone: on an idle machine, prepare and run a lone batch in one hop to the solo instance


def prepared(
    marker: float, calls: list[threading.Thread] | None = None
) -> Callable[[], np.ndarray]:
    """A ``prepare`` that makes a one-image batch of ``marker``, noting the thread it ran on."""

    def prepare() -> np.ndarray:
        if calls is not None:
            calls.append(threading.current_thread())
        return np.stack(images([marker]))

    return prepare


async def test_run_alone_prepares_and_runs_on_the_solo_thread(make: MakeHarness) -> None:
    h = make(instances=2, solo=True)
    assert h.solo is not None
    calls: list[threading.Thread] = []
    logits = await asyncio.wait_for(h.batcher.run_alone(prepared(3.0, calls), None), HANG_GUARD)
    assert logits is not None
    np.testing.assert_array_equal(logits, expected_rows([3.0]))
    # One hop: the image was prepared on the very thread that ran the model.
    assert calls == h.solo.threads
    assert calls[0] is not threading.current_thread()
    assert all(model.batches == [] for model in h.models)
    stats = h.batcher.stats
    assert (stats.one_hop, stats.solo, stats.batches, stats.images) == (1, 1, 1, 1)


async def test_run_alone_declines_without_a_solo_instance(make: MakeHarness) -> None:
    h = make(instances=1)
    calls: list[threading.Thread] = []
    assert await h.batcher.run_alone(prepared(1.0, calls), None) is None
    assert calls == []
    assert h.model.batches == []


async def test_run_alone_declines_while_a_batch_runs(make: MakeHarness) -> None:
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    running = h.submit([1.0])
    await h.batches(1, h.solo)
    calls: list[threading.Thread] = []
    assert await h.batcher.run_alone(prepared(2.0, calls), None) is None
    assert calls == []
    h.solo.release()
    assert [row[0] for row in await result(running)] == [1.0]


async def test_run_alone_declines_while_images_are_queued(make: MakeHarness) -> None:
    h = make(instances=1, solo=True, start=False)  # no workers: the queue stays as it is
    queued = h.submit([1.0])
    await h.all_started()
    await h.queued(1)
    calls: list[threading.Thread] = []
    assert await h.batcher.run_alone(prepared(2.0, calls), None) is None
    assert calls == []
    queued.cancel()


async def test_run_alone_declines_once_closed(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    await h.batcher.close()
    assert await h.batcher.run_alone(prepared(1.0), None) is None
    with pytest.raises(ServerUnavailable):
        await h.batcher.submit(images([1.0]), None)


async def solo_taken_by_run_alone(
    make: MakeHarness,
) -> tuple[Harness, FakeModel, asyncio.Task[np.ndarray | None]]:
    """Two blocked per-core instances and a solo one, on which run_alone is running marker 1."""
    h = make(instances=2, solo=True, blocked=True)
    assert h.solo is not None
    alone = asyncio.create_task(h.batcher.run_alone(prepared(1.0), None))
    await h.batches(1, h.solo)
    return h, h.solo, alone


async def next_batch_goes_to_a_per_core_instance(
    h: Harness, solo: FakeModel, marker: float
) -> None:
    """Submits ``marker``, checks a per-core instance took it while the solo one is busy, and
    releases every instance."""
    task = h.submit([marker])
    await until(lambda: sum(len(m.batches) for m in h.models) == 1, "the next batch to start")
    assert solo.batches == [[1.0]]
    for model in [solo, *h.models]:
        model.release()
    assert [row[0] for row in await result(task)] == [marker]


async def test_while_run_alone_runs_a_submitted_batch_uses_a_per_core_instance(
    make: MakeHarness,
) -> None:
    h, solo, alone = await solo_taken_by_run_alone(make)
    await next_batch_goes_to_a_per_core_instance(h, solo, 2.0)
    lone = await asyncio.wait_for(alone, HANG_GUARD)
    assert lone is not None
    assert [row[0] for row in lone] == [1.0]


async def test_run_alone_holds_the_solo_instance_until_its_thread_is_done(
    make: MakeHarness,
) -> None:
    """A caller that gives up does not free the solo instance while its batch still runs there."""
    h, solo, alone = await solo_taken_by_run_alone(make)
    alone.cancel()
    await asyncio.gather(alone, return_exceptions=True)
    assert await h.batcher.run_alone(prepared(2.0), None) is None  # still busy
    await next_batch_goes_to_a_per_core_instance(h, solo, 3.0)
    await until(lambda: solo.inside == 0, "the solo batch to end")
    await settle()
    assert await h.batcher.run_alone(prepared(4.0), None) is not None  # free again


async def test_run_alone_passes_preparation_errors_through(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None

    def bad_image() -> np.ndarray:
        raise InvalidArgument("image 0 is not an image")

    with pytest.raises(InvalidArgument, match="image 0 is not an image"):
        await h.batcher.run_alone(bad_image, None)
    assert h.solo.batches == []
    # The instance is free again for the next request.
    assert await h.batcher.run_alone(prepared(1.0), None) is not None


async def test_run_alone_turns_model_failures_into_batch_errors(
    make: MakeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(inputs: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of cheese")

    h = make(instances=1, solo=True, respond=broken)
    with (
        caplog.at_level(logging.ERROR, logger="serve.batching"),
        pytest.raises(BatchError, match="out of cheese"),
    ):
        await h.batcher.run_alone(prepared(1.0), None)
    assert "model failed on a batch of 1" in caplog.text


async def test_run_alone_refuses_an_expired_deadline(make: MakeHarness) -> None:
    h = make(instances=1, solo=True)
    assert h.solo is not None
    calls: list[threading.Thread] = []
    with pytest.raises(DeadlineExpired):
        await h.batcher.run_alone(prepared(1.0, calls), h.clock.now)
    assert calls == [] and h.solo.batches == []
    assert await h.batcher.run_alone(prepared(1.0, calls), h.clock.now + 1) is not None
