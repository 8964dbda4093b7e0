"""A served model: its signature, its batcher over N backend instances, and its fronts.

The signature the APIs see is the backend's, adapted by the fronts: a bundled image classifier
takes either encoded images (the BYTES input ``image``) or its pre-processed tensor (``input``),
and returns class probabilities (``probabilities``) where the model computes logits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from export.manifest import Manifest
from serve.backend_choice import choose_backend
from serve.backends import Backend, load_backend, load_manifest
from serve.batching import Batcher, Call, ReadyTensors, RunBatch, Tensors
from serve.config import ServerConfig
from serve.errors import FailedPrecondition, InvalidArgument, shortened
from serve.fronts.classification import ClassScores
from serve.fronts.image import ImageFront
from serve.repository.settings import PLATFORM_OF
from serve.signature import Signature, check_inputs
from serve.tensors import Tensor, TensorSpec

__all__ = ["BackendDefaults", "ModelInfo", "ServedModel", "backend_defaults", "load_model"]

log = logging.getLogger(__name__)

# Every model has one version until the repository serves numbered versions.
VERSION = "1"


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
        signature: Signature,
        batcher: Batcher,
        *,
        instances: int,
        image: ImageFront | None = None,
        scores: ClassScores | None = None,
    ) -> None:
        self.info = info
        self.name = info.name
        self.version = VERSION
        self.platform = PLATFORM_OF.get(info.backend, info.backend)
        self.signature = signature
        self.batcher = batcher
        self.instances = instances
        self.image = image
        self.scores = scores

    @property
    def tensor_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs a request sends as tensors (the image front's BYTES input is an
        alternative to the tensor it feeds)."""
        front = self.image
        return tuple(s for s in self.signature.inputs if front is None or s.name != front.spec.name)

    async def infer(self, inputs: Sequence[Tensor], call: Call) -> Tensors:
        """The model's outputs for named input tensors (or encoded images in the image input).

        A request that carries both the images and the tensor is served from the tensor and
        nothing is decoded: tools that fill every declared input (perf_analyzer's generated
        data) then measure the model.
        """
        names = {spec.name for spec in self.signature.inputs}
        unknown = [t.name for t in inputs if t.name not in names]
        if unknown:
            raise InvalidArgument(
                f"unknown input {shortened(unknown[0])} (inputs: {', '.join(sorted(names))})"
            )
        front = self.image
        if front is not None:
            encoded = [t for t in inputs if t.name == front.spec.name]
            if encoded and len(encoded) == len(inputs):
                return await self.infer_images(_encoded_images(encoded, front), call)
            inputs = [t for t in inputs if t.name != front.spec.name]
        arrays = check_inputs(
            self.tensor_inputs, inputs, batching=self.signature.max_batch_size > 0
        )
        return await self.batcher.infer(ReadyTensors(arrays), call)

    async def infer_images(self, images: Sequence[bytes], call: Call) -> Tensors:
        if self.image is None:
            raise FailedPrecondition(
                f"model {shortened(self.name)} takes tensors, not images: use the KServe API"
            )
        return await self.batcher.infer(self.image.work(images, call.deadline), call)

    def class_scores(self) -> ClassScores:
        if self.scores is None:
            raise FailedPrecondition(f"model {shortened(self.name)} is not a classifier")
        return self.scores

    async def close(self) -> None:
        await self.batcher.close()
        stats = self.batcher.stats
        if stats.batches:
            log.info(
                "%s served %d row(s) in %d batch(es), %.1f rows a batch; %d on the solo "
                "instance (%d made there in one hop); %d dropped (expired or cancelled)",
                self.name, stats.rows, stats.batches, stats.rows / stats.batches,
                stats.solo, stats.one_hop, stats.dropped,
            )  # fmt: skip


def _encoded_images(inputs: Sequence[Tensor], front: ImageFront) -> list[bytes]:
    if len(inputs) != 1:
        raise InvalidArgument(f"input {front.spec.name!r} is given {len(inputs)} times")
    tensor = inputs[0]
    if tensor.datatype != front.spec.datatype or len(tensor.shape) != 2 or tensor.shape[1] != 1:
        raise InvalidArgument(
            f"input {front.spec.name!r}: {tensor.datatype} {list(tensor.shape)}, expected "
            f"{front.spec.datatype} [N, 1] (one encoded image a row)"
        )
    return [bytes(item) for item in tensor.data.reshape(-1)]


def _warm_up(backend: Backend) -> None:
    """The first calls allocate and (for TorchScript) optimise the graph: done before serving."""
    sample = {
        spec.name: np.zeros([1 if d < 0 else d for d in spec.shape], dtype=np.float32)
        for spec in backend.inputs
    }
    backend.run(sample)
    backend.run(sample)


def _with_front(run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
                scores: ClassScores) -> RunBatch:  # fmt: skip
    def run_and_score(inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        return scores.probabilities(run(inputs))

    return run_and_score


def load_model(name: str, config: ServerConfig, decode_pool: Executor) -> ServedModel:
    """Loads ``name`` from the artifacts on the configured backend. Blocks: call at start-up."""
    started = time.perf_counter()
    manifest = load_manifest(config.artifacts, name)
    choice = choose_backend(config.backend, config.artifacts, name)
    cores = os.cpu_count() or 1
    defaults = backend_defaults(choice.backend, cores)
    instances = config.instances or defaults.instances
    threads = config.threads or defaults.threads
    backends = [
        load_backend(choice.backend, config.artifacts, manifest, threads) for _ in range(instances)
    ]
    solo = None
    if backends[0].threads_per_instance and threads < cores:
        solo = load_backend(choice.backend, config.artifacts, manifest, cores)
    for backend in [*backends, *([solo] if solo else [])]:
        _warm_up(backend)
    batching = config.batching(defaults.max_batch_size)
    image, scores, signature = _bundled_classifier(manifest, backends[0], config, decode_pool)
    signature = Signature(signature.inputs, signature.outputs, batching.max_batch_size)
    batcher = Batcher(
        [_with_front(b.run, scores) for b in backends],
        batching,
        solo=_with_front(solo.run, scores) if solo is not None else None,
    )
    log.info(
        "loaded %s on %s (%s): %d instance(s) x %d thread(s)%s, batches of up to %d, "
        "in %.2f s (weights %s)",
        name, choice.backend, choice.reason, instances, threads,
        f" + a {cores}-thread instance for lone batches" if solo is not None else "",
        batching.max_batch_size, time.perf_counter() - started, manifest.weights_source,
    )  # fmt: skip
    info = ModelInfo(
        name=name,
        backend=choice.backend,
        weights_source=manifest.weights_source,
        input_height=manifest.preprocessing.height,
        input_width=manifest.preprocessing.width,
        num_classes=len(manifest.labels),
    )
    return ServedModel(info, signature, batcher, instances=instances, image=image, scores=scores)


def _bundled_classifier(
    manifest: Manifest, backend: Backend, config: ServerConfig, decode_pool: Executor
) -> tuple[ImageFront, ClassScores, Signature]:
    """The fronts of a bundled model (one image input, one logits output) and the signature
    they give it."""
    (tensor,) = backend.inputs
    (logits,) = backend.outputs
    image = ImageFront(
        tensor.name,
        manifest.preprocessing,
        config.image_limits,
        decode_pool,
        config.max_images_per_request,
    )
    scores = ClassScores("probabilities", logits.name, manifest.labels)
    probabilities = TensorSpec(scores.name, logits.datatype, logits.shape)
    return image, scores, Signature((image.spec, tensor), (probabilities,))
