"""Load generators: a closed loop (N workers each send a request, wait for it, and send the next)
and an open loop (requests sent at a fixed rate, answered or not).

Shared by `make compare` and the benchmarks; they know nothing about which API they drive: they are
given a coroutine function that sends one request and returns how many images it carried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadResult", "closed_loop", "open_loop"]

SendOne = Callable[[], Awaitable[int]]


@dataclass
class LoadResult:
    concurrency: int
    seconds: float = 0.0
    images: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def add(self, other: LoadResult) -> None:
        """Folds in another run at the same concurrency, as if they were one."""
        self.seconds += other.seconds
        self.images += other.images
        self.errors += other.errors
        self.latencies += other.latencies

    def summary(self) -> dict[str, float]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "images": self.images,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests_per_second, 2),
            "images_per_s": round(self.images_per_second, 2),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p90_ms": round(self.percentile_ms(90), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
        }


async def closed_loop(
    send: SendOne,
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    on_request: Callable[[], object] | None = None,
) -> LoadResult:
    """Runs until ``requests`` have completed or ``duration`` seconds have passed."""
    if (requests is None) == (duration is None):
        raise ValueError("give exactly one of requests and duration")
    result = LoadResult(concurrency)
    remaining = requests if requests is not None else -1
    stop_at = time.perf_counter() + duration if duration is not None else float("inf")

    async def worker() -> None:
        nonlocal remaining
        while remaining != 0 and time.perf_counter() < stop_at:
            remaining -= 1
            started = time.perf_counter()
            try:
                # Not `result.images += await send()`: that reads the total before awaiting and
                # loses the other workers' updates made meanwhile.
                images = await send()
            except Exception:
                result.errors += 1
                continue
            result.images += images
            result.latencies.append(time.perf_counter() - started)
            if on_request is not None:
                on_request()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(send: SendOne, rate: float, *, duration: float) -> LoadResult:
    """Sends ``rate`` requests a second for ``duration`` seconds, whether or not the earlier ones
    have been answered, as independent clients would: the server sees this load however it copes.

    The i-th of the ``round(rate * duration)`` requests leaves ``i / rate`` seconds after the start;
    the run ends ``requests / rate`` seconds after it (one whole interval after the last request,
    so that the run covers the same span for each one), or when the last answer is in if that is
    later. The result's ``concurrency`` is the most requests that were in flight at once.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be > 0")
    result = LoadResult(concurrency=0)
    in_flight = 0

    async def one() -> None:
        nonlocal in_flight
        in_flight += 1
        result.concurrency = max(result.concurrency, in_flight)
        started = time.perf_counter()
        try:
            images = await send()
        except Exception:
            result.errors += 1
        else:
            result.images += images
            result.latencies.append(time.perf_counter() - started)
        finally:
            in_flight -= 1

    count = round(rate * duration)
    tasks: list[asyncio.Task[None]] = []
    started = time.perf_counter()
    try:
        for i in range(count):
            # Each departure is scheduled from the start, so a late one does not delay the rest.
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    await asyncio.sleep(max(0.0, started + count / rate - time.perf_counter()))
    result.seconds = time.perf_counter() - started
    return result
