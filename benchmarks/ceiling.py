"""The in-process ceiling: the server's per-image work (decode, pre-process, model) with no RPC.

This is what the server is measured against: threads that each decode an image and run it through
their own model instance, as fast as the machine allows, and one thread timing a single image with
every core given to the model (the best latency a request could see).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.manifest import Manifest
from serve.backends import Backend, load_backend, run_single
from serve.imaging import ImageLimits, load_image
from serve.models import backend_defaults

__all__ = [
    "Ceiling",
    "CeilingRunner",
    "LoneImage",
    "measure_ceiling",
    "measure_single_image_latency",
    "run_images",
]


@dataclass(frozen=True)
class Ceiling:
    images_per_s: float
    instances: int
    threads_per_instance: int


def run_images(backend: Backend, data: bytes, manifest: Manifest, images: int) -> np.ndarray:
    """``images`` copies of one image decoded, pre-processed and run as one batch: the logits."""
    limits = ImageLimits()
    arrays = [load_image(data, i, limits, manifest.preprocessing) for i in range(images)]
    return run_single(backend, np.stack(arrays))


class CeilingRunner:
    """One worker thread per model instance, each decoding its own images and running them on
    its own instance. Loaded once, so it can be measured in slices between other work."""

    def __init__(
        self,
        kind: str,
        artifacts: Path,
        manifest: Manifest,
        data: bytes,
        *,
        images_per_request: int = 1,
    ) -> None:
        defaults = backend_defaults(kind, os.cpu_count() or 1)
        self.instances, self.threads = defaults.instances, defaults.threads
        self._backends = [
            load_backend(kind, artifacts, manifest, self.threads) for _ in range(self.instances)
        ]
        self._manifest = manifest
        self._data = data
        self._images_per_request = images_per_request
        for backend in self._backends:
            for _ in range(3):
                self._work(backend)

    def _work(self, backend: Backend) -> None:
        run_images(backend, self._data, self._manifest, self._images_per_request)

    def run(
        self, seconds: float, on_image: Callable[[int], object] | None = None
    ) -> tuple[int, float]:
        """Runs every worker for ``seconds``: (images done, seconds taken)."""
        counts = [0] * self.instances
        stop_at = time.perf_counter() + seconds

        def loop(index: int) -> None:
            while time.perf_counter() < stop_at:
                self._work(self._backends[index])
                counts[index] += self._images_per_request
                if on_image is not None:
                    on_image(self._images_per_request)

        started = time.perf_counter()
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(self.instances)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts), time.perf_counter() - started


def measure_ceiling(
    kind: str,
    artifacts: Path,
    manifest: Manifest,
    data: bytes,
    *,
    seconds: float,
    images_per_request: int = 1,
    on_image: Callable[[int], object] | None = None,
) -> Ceiling:
    """Images/s of a ``CeilingRunner`` over ``seconds``."""
    runner = CeilingRunner(kind, artifacts, manifest, data, images_per_request=images_per_request)
    images, taken = runner.run(seconds, on_image)
    return Ceiling(images / taken, runner.instances, runner.threads)


class LoneImage:
    """One image decoded, pre-processed and classified with every core on the model: the best
    latency a request could see. Loaded once, so it can be timed in slices between other work."""

    def __init__(self, kind: str, artifacts: Path, manifest: Manifest, data: bytes) -> None:
        self._backend = load_backend(kind, artifacts, manifest, os.cpu_count() or 1)
        self._manifest = manifest
        self._data = data
        self.time(5)

    def time(self, iterations: int) -> list[float]:
        """Seconds for each of ``iterations`` back-to-back runs."""
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            run_images(self._backend, self._data, self._manifest, 1)
            samples.append(time.perf_counter() - started)
        return samples


def measure_single_image_latency(
    kind: str, artifacts: Path, manifest: Manifest, data: bytes, *, iterations: int = 100
) -> float:
    """Median seconds for one image with every core on it (see ``LoneImage``)."""
    return statistics.median(LoneImage(kind, artifacts, manifest, data).time(iterations))
