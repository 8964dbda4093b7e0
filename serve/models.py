"""A served model version: its signature, its batcher over N backend instances, and its fronts.

The signature the APIs see is the model's, adapted by its fronts (serve.fronts.model_fronts): an
image model also takes encoded images (the BYTES input ``image``), and a model whose config says
its output holds logits returns ``probabilities``. ``serve.loading`` builds these.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from serve.batching import Batcher, Call, ReadyTensors, Tensors
from serve.errors import FailedPrecondition, InvalidArgument, shortened
from serve.fronts.classification import ClassScores
from serve.fronts.image import ImageFront
from serve.repository.settings import PLATFORM_OF, ModelSettings
from serve.signature import Signature, check_inputs
from serve.tensors import Tensor, TensorSpec

if TYPE_CHECKING:
    from serve.fronts.model_fronts import ModelFronts

__all__ = ["ModelInfo", "ServedModel"]

log = logging.getLogger(__name__)

# How long a retired version may take to finish the requests it admitted; the ones left then are
# answered UNAVAILABLE, which clients retry.
RETIRE_SECONDS = 60.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    weights_source: str
    # An image model's input size; 0 for a tensor model.
    input_height: int = 0
    input_width: int = 0
    # Labels of the classifier output; 0 for a model that is no classifier.
    num_classes: int = 0


class ServedModel:
    def __init__(
        self,
        info: ModelInfo,
        signature: Signature,
        batcher: Batcher,
        *,
        version: str,
        instances: int,
        settings: ModelSettings,
        fronts: ModelFronts,
    ) -> None:
        self.info = info
        self.name = info.name
        self.version = version
        self.platform = PLATFORM_OF.get(info.backend, info.backend)
        self.signature = signature
        self.batcher = batcher
        self.instances = instances
        self.settings = settings
        self.fronts = fronts
        self.image: ImageFront | None = fronts.image
        self.scores: ClassScores | None = fronts.scores
        # Requests between lookup and answer: a retired version finishes these first.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

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
        with self._request():
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
                    work = front.work(_encoded_images(encoded, front), call.deadline)
                    return await self.batcher.infer(work, call)
                inputs = [t for t in inputs if t.name != front.spec.name]
            batching = self.signature.max_batch_size > 0
            arrays = check_inputs(self.tensor_inputs, inputs, batching=batching)
            if batching:
                return await self.batcher.infer(ReadyTensors(arrays), call)
            # One request is one row of a batch of one, with the axis added here and taken off
            # around the model (ModelFronts.wrap).
            rows = {name: array[np.newaxis] for name, array in arrays.items()}
            outputs = await self.batcher.infer(ReadyTensors(rows), call)
            return {name: array[0] for name, array in outputs.items()}

    async def infer_images(self, images: Sequence[bytes], call: Call) -> Tensors:
        with self._request():
            front = self.image_front()
            return await self.batcher.infer(front.work(images, call.deadline), call)

    def image_front(self) -> ImageFront:
        if self.image is None:
            raise FailedPrecondition(
                f"model {shortened(self.name)} takes tensors, not images: use the KServe API"
            )
        return self.image

    def class_scores(self) -> ClassScores:
        if self.scores is None:
            raise FailedPrecondition(
                f"model {shortened(self.name)} is not a classifier (it has no one output with "
                "a label_filename)"
            )
        return self.scores

    def labelled(self, output: str) -> ClassScores:
        """The labels of ``output``, for Triton's classification extension."""
        scores = self.fronts.labelled.get(output)
        if scores is None:
            raise InvalidArgument(
                f"output {shortened(output)} has no labels: classification needs an output "
                "with a label_filename"
            )
        return scores

    @contextmanager
    def _request(self) -> Iterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def retire(self) -> None:
        """Once no request is left on this version (or after RETIRE_SECONDS), closes it.
        Requests already running finish here; new ones no longer find it."""
        try:
            await asyncio.wait_for(self._idle.wait(), RETIRE_SECONDS)
        except TimeoutError:
            log.warning(
                "%s version %s: %d request(s) still running after %.0f s are answered "
                "UNAVAILABLE", self.name, self.version, self._in_flight, RETIRE_SECONDS,
            )  # fmt: skip
        await self.close()

    async def close(self) -> None:
        await self.batcher.close()
        stats = self.batcher.stats
        if stats.batches:
            log.info(
                "%s version %s served %d row(s) in %d batch(es), %.1f rows a batch; %d on the "
                "solo instance (%d made there in one hop); %d dropped (expired or cancelled)",
                self.name, self.version, stats.rows, stats.batches, stats.rows / stats.batches,
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
