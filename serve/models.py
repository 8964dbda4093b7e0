"""A served model: its manifest, its batcher over N backend instances, and the image path to it."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from export.manifest import Manifest
from serve.backend_choice import choose_backend
from serve.backends import load_backend, load_manifest
from serve.batching import Batcher
from serve.config import ServerConfig
from serve.imaging import ImageLimits, load_image

__all__ = ["BackendDefaults", "ModelInfo", "ServedModel", "backend_defaults", "load_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    weights_source: str
    input_height: int
    input_width: int
    num_classes: int


@dataclass(frozen=True)
class BackendDefaults:
    instances: int
    threads: int
    max_batch_size: int


def backend_defaults(backend: str, cores: int) -> BackendDefaults:
    """Instances, intra-op threads each, and batch size that suit ``backend`` on ``cores`` cores.

    ONNX Runtime sessions are independent, so one single-threaded session per core keeps every
    core busy with no intra-op synchronisation, and batches of up to 16 raise its throughput.
    PyTorch's thread pool is per process, so torch backends get one instance using every core;
    their time per image grows past batch 4 on this kind of machine (`make compare`).
    """
    if backend == "onnxruntime":
        return BackendDefaults(instances=cores, threads=1, max_batch_size=16)
    return BackendDefaults(instances=1, threads=cores, max_batch_size=4)


class ServedModel:
    def __init__(
        self,
        info: ModelInfo,
        manifest: Manifest,
        batcher: Batcher,
        decode_pool: Executor,
        limits: ImageLimits,
    ) -> None:
        self.info = info
        self.manifest = manifest
        self.batcher = batcher
        self._decode_pool = decode_pool
        self._limits = limits

    @property
    def labels(self) -> Sequence[str]:
        return self.manifest.labels

    async def logits(self, images: Sequence[bytes], deadline: float | None) -> np.ndarray:
        """(N, classes) logits: decodes the images in the pool, then batches them through the
        model; a lone image on an idle server is decoded and run in one hop instead."""
        pre = self.manifest.preprocessing
        if len(images) == 1:
            # Several images decode faster in parallel in the pool than on one thread.
            def prepare() -> np.ndarray:
                return load_image(images[0], 0, self._limits, pre)[np.newaxis]

            logits = await self.batcher.run_alone(prepare, deadline)
            if logits is not None:
                return logits
        loop = asyncio.get_running_loop()
        arrays = await asyncio.gather(
            *(
                loop.run_in_executor(self._decode_pool, load_image, data, i, self._limits, pre)
                for i, data in enumerate(images)
            )
        )
        return await self.batcher.submit(arrays, deadline)

    async def close(self) -> None:
        await self.batcher.close()
        stats = self.batcher.stats
        if stats.batches:
            log.info(
                "%s served %d image(s) in %d batch(es), %.1f images a batch; %d on the solo "
                "instance (%d decoded there in one hop); %d dropped (expired or cancelled)",
                self.info.name, stats.images, stats.batches, stats.images / stats.batches,
                stats.solo, stats.one_hop, stats.dropped,
            )  # fmt: skip


def load_model(name: str, config: ServerConfig, decode_pool: Executor) -> ServedModel:
    """Loads ``name`` from the artifacts on the configured backend. Blocks: call at start-up."""
    started = time.perf_counter()
    manifest = load_manifest(config.artifacts, name)
    choice = choose_backend(config.backend, config.artifacts, name)
    defaults = backend_defaults(choice.backend, os.cpu_count() or 1)
    instances = config.instances or defaults.instances
    threads = config.threads or defaults.threads
    backends = [
        load_backend(choice.backend, config.artifacts, manifest, threads) for _ in range(instances)
    ]
    cores = os.cpu_count() or 1
    solo = None
    if backends[0].threads_per_instance and threads < cores:
        solo = load_backend(choice.backend, config.artifacts, manifest, cores)
    warm_up = np.zeros((1, *manifest.input_shape), dtype=np.float32)
    for backend in [*backends, *([solo] if solo else [])]:
        # The first calls allocate and (for TorchScript) optimise the graph: do it before serving.
        backend.run(warm_up)
        backend.run(warm_up)
    log.info(
        "loaded %s on %s (%s): %d instance(s) x %d thread(s)%s, batches of up to %d, "
        "in %.2f s (weights %s)",
        name,
        choice.backend,
        choice.reason,
        instances,
        threads,
        f" + a {cores}-thread instance for lone batches" if solo is not None else "",
        config.max_batch_size or defaults.max_batch_size,
        time.perf_counter() - started,
        manifest.weights_source,
    )
    info = ModelInfo(
        name=name,
        backend=choice.backend,
        weights_source=manifest.weights_source,
        input_height=manifest.preprocessing.height,
        input_width=manifest.preprocessing.width,
        num_classes=len(manifest.labels),
    )
    batcher = Batcher(
        [b.run for b in backends],
        config.batching(defaults.max_batch_size),
        solo=solo.run if solo is not None else None,
    )
    return ServedModel(info, manifest, batcher, decode_pool, config.image_limits)
