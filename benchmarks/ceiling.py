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

from export.manifest import Preprocessing
from serve.backends import Backend, run_single
from serve.errors import ArtifactError
from serve.imaging import ImageLimits, load_image
from serve.loading import backend_defaults, open_backend

__all__ = [
    "Ceiling",
    "CeilingRunner",
    "ImageModel",
    "LoneImage",
    "measure_ceiling",
    "measure_single_image_latency",
    "open_image_model",
    "run_images",
]


@dataclass(frozen=True)
class Ceiling:
    images_per_s: float
    instances: int
    threads_per_instance: int


@dataclass(frozen=True)
class ImageModel:
    """A bare model instance and how its images are pre-processed: what the benchmarks time."""

    backend: Backend
    preprocessing: Preprocessing


def open_image_model(repository: Path, name: str, backend: str, threads: int) -> ImageModel:
    """``serve.loading.open_backend`` for a model fed from encoded images, the only kind the
    benchmarks send."""
    opened = open_backend(repository, name, backend, threads)
    if opened.preprocessing is None:
        raise ArtifactError(
            f"{name} takes no images (its config.pbtxt names no image_input): "
            "the benchmarks send images"
        )
    return ImageModel(opened.backend, opened.preprocessing)


def run_images(model: ImageModel, data: bytes, images: int) -> np.ndarray:
    """``images`` copies of one image decoded, pre-processed and run as one batch: the logits."""
    limits = ImageLimits()
    arrays = [load_image(data, i, limits, model.preprocessing) for i in range(images)]
    return run_single(model.backend, np.stack(arrays))


class CeilingRunner:
    """One worker thread per model instance, each decoding its own images and running them on
    its own instance: ``repository/name`` on ``backend`` with the server's default instances
    and threads. Loaded once, so it can be measured in slices between other work."""

    def __init__(
        self,
        repository: Path,
        name: str,
        backend: str,
        data: bytes,
        *,
        images_per_request: int = 1,
    ) -> None:
        defaults = backend_defaults(backend, os.cpu_count() or 1)
        self.instances, self.threads = defaults.instances, defaults.threads
        self._models = [
            open_image_model(repository, name, backend, self.threads) for _ in range(self.instances)
        ]
        self._data = data
        self._images_per_request = images_per_request
        for model in self._models:
            for _ in range(3):
                self._work(model)

    def _work(self, model: ImageModel) -> None:
        run_images(model, self._data, self._images_per_request)

    def run(
        self, seconds: float, on_image: Callable[[int], object] | None = None
    ) -> tuple[int, float]:
        """Runs every worker for ``seconds``: (images done, seconds taken)."""
        counts = [0] * self.instances
        stop_at = time.perf_counter() + seconds

        def loop(index: int) -> None:
            while time.perf_counter() < stop_at:
                self._work(self._models[index])
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
    repository: Path,
    name: str,
    backend: str,
    data: bytes,
    *,
    seconds: float,
    images_per_request: int = 1,
    on_image: Callable[[int], object] | None = None,
) -> Ceiling:
    """Images/s of a ``CeilingRunner`` over ``seconds``."""
    runner = CeilingRunner(repository, name, backend, data, images_per_request=images_per_request)
    images, taken = runner.run(seconds, on_image)
    return Ceiling(images / taken, runner.instances, runner.threads)


class LoneImage:
    """One image decoded, pre-processed and classified by ``repository/name`` on ``backend`` with
    every core on the model: the best latency a request could see. Loaded once, so it can be
    timed in slices between other work."""

    def __init__(self, repository: Path, name: str, backend: str, data: bytes) -> None:
        self._model = open_image_model(repository, name, backend, os.cpu_count() or 1)
        self._data = data
        self.time(5)

    def time(self, iterations: int) -> list[float]:
        """Seconds for each of ``iterations`` back-to-back runs."""
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            run_images(self._model, self._data, 1)
            samples.append(time.perf_counter() - started)
        return samples


def measure_single_image_latency(
    repository: Path, name: str, backend: str, data: bytes, *, iterations: int = 100
) -> float:
    """Median seconds for one image with every core on it (see ``LoneImage``)."""
    return statistics.median(LoneImage(repository, name, backend, data).time(iterations))
