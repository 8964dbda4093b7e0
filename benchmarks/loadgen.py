"""A closed-loop load generator: N workers each send a request, wait for it, and send the next.

Shared by `make compare` and the benchmarks; it knows nothing about which API it drives: it is
given a coroutine function that sends one request and returns how many images it carried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LoadResult", "closed_loop"]

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
