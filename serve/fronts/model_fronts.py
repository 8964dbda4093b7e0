"""What a model's config asks to be put in front of it: encoded images for an image input,
probabilities for logits, labels for scores, and a batch axis for a model without one.

``make_fronts`` reads the entry's parameters and label files against the model's own signature
and gives the signature the APIs see; ``ModelFronts.wrap`` is what runs around each batch on the
model's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import NoReturn

import numpy as np

from export.manifest import Preprocessing
from serve.batching import RunBatch
from serve.config import ServerConfig
from serve.errors import RepositoryError
from serve.fronts.classification import ClassScores
from serve.fronts.image import ImageFront
from serve.repository import CONFIG_NAME, ModelEntry
from serve.repository.settings import IMAGE_INPUT_PARAMETER, SOFTMAX_PARAMETER
from serve.signature import Signature
from serve.tensors import VARIABLE, TensorSpec

__all__ = ["PROBABILITIES", "ModelFronts", "image_preprocessing", "make_fronts"]

# The output a `softmax` model's logits are served as.
PROBABILITIES = "probabilities"
# The BYTES input of an image model: the first of these names the model doesn't use itself.
_IMAGE_INPUT_NAMES = ("image", "encoded_image", "image_bytes")
# Per-model image limits go in `parameters` under the server's flag names (max_pixels,
# max_request_pixels, max_images_per_request), and override the flags.
_Fail = Callable[[str, str], NoReturn]


@dataclass(frozen=True)
class ModelFronts:
    # The signature the APIs see.
    signature: Signature
    image: ImageFront | None = None
    # The output the tutorial and Classifier APIs rank: the model's one labelled output.
    scores: ClassScores | None = None
    # Every labelled output by its served name (Triton's classification extension).
    labelled: Mapping[str, ClassScores] = field(default_factory=dict)
    # The model has no batch axis: the batcher sees every request as one row of its own.
    unbatched: bool = False

    def wrap(self, run: RunBatch) -> RunBatch:
        """``run`` with the fronts' work around it, for the model's thread."""
        scores = self.scores if self.scores is not None and self.scores.softmax else None
        unbatched = self.unbatched
        if scores is None and not unbatched:
            return run

        def run_with_fronts(inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
            if unbatched:
                inputs = {name: array[0] for name, array in inputs.items()}
            outputs = run(inputs)
            if scores is not None:
                outputs = scores.probabilities(outputs)
            if unbatched:
                outputs = {name: array[np.newaxis] for name, array in outputs.items()}
            return outputs

        return run_with_fronts


def make_fronts(
    entry: ModelEntry,
    model: Signature,
    max_batch_size: int,
    config: ServerConfig,
    decode_pool: Executor,
) -> ModelFronts:
    """The fronts of ``entry`` over its model's own signature ``model``."""
    shown = str(entry.folder / CONFIG_NAME)

    def fail(field: str, reason: str) -> NoReturn:
        raise RepositoryError(shown, reason, field)

    parameters = entry.settings.parameters
    batching = model.max_batch_size > 0
    outputs = {spec.name: spec for spec in model.outputs}
    labelled: dict[str, ClassScores] = {}
    for name, labels in entry.labels.items():
        if name not in outputs:
            fail("output", f"{name!r} has a label_filename but the model has no such output")
        labelled[name] = ClassScores(name, name, labels, softmax=False)
    served_outputs = list(model.outputs)
    logits = parameters.get(SOFTMAX_PARAMETER)
    if logits is not None:
        if logits not in labelled:
            fail(SOFTMAX_PARAMETER, f"{logits!r} is not an output with a label_filename")
        if PROBABILITIES in outputs:
            fail(SOFTMAX_PARAMETER, f"the model already has an output named {PROBABILITIES!r}")
        labels = labelled.pop(logits).labels
        labelled[PROBABILITIES] = ClassScores(PROBABILITIES, logits, labels)
        served_outputs = [
            replace(spec, name=PROBABILITIES) if spec.name == logits else spec
            for spec in served_outputs
        ]
    scores = next(iter(labelled.values())) if len(labelled) == 1 else None
    if logits is not None:
        scores = labelled[PROBABILITIES]
    image = None
    image_input = parameters.get(IMAGE_INPUT_PARAMETER)
    if image_input is not None:
        if not batching:
            fail(IMAGE_INPUT_PARAMETER, "an image model needs a batch axis (max_batch_size > 0)")
        image = _image_front(model, image_input, parameters, config, decode_pool, fail)
    served = Signature(
        ((image.spec,) if image is not None else ()) + model.inputs,
        tuple(served_outputs),
        max_batch_size if batching else 0,
    )
    return ModelFronts(served, image, scores, labelled, unbatched=not batching)


def _image_front(
    model: Signature,
    name: str,
    parameters: Mapping[str, str],
    config: ServerConfig,
    decode_pool: Executor,
    fail: _Fail,
) -> ImageFront:
    inputs = {spec.name: spec for spec in model.inputs}
    spec = inputs.get(name)
    if spec is None:
        fail(IMAGE_INPUT_PARAMETER, f"{name!r} is not an input of the model")
    preprocessing = image_preprocessing(spec, parameters, fail)
    limits = config.image_limits
    max_pixels = _positive(parameters, "max_pixels", fail)
    max_request_pixels = _positive(parameters, "max_request_pixels", fail)
    max_images = _positive(parameters, "max_images_per_request", fail)
    image_limits = replace(
        limits,
        max_pixels=max_pixels or limits.max_pixels,
        max_request_pixels=max_request_pixels or limits.max_request_pixels,
    )
    free = next((n for n in _IMAGE_INPUT_NAMES if n not in inputs), None)
    if free is None:
        fail(
            IMAGE_INPUT_PARAMETER,
            f"the model's own inputs take every name the encoded images could have "
            f"({', '.join(_IMAGE_INPUT_NAMES)})",
        )
    return ImageFront(
        name,
        preprocessing,
        image_limits,
        decode_pool,
        max_images or config.max_images_per_request,
        name=free,
    )


def image_preprocessing(
    spec: TensorSpec, parameters: Mapping[str, str], fail: _Fail
) -> Preprocessing:
    """The pre-processing that feeds the image input ``spec``, from the image_* parameters."""
    layout = parameters.get("image_layout", "NCHW")
    height, width = _image_size(spec, layout, fail)
    try:
        return Preprocessing.from_parameters(parameters, height, width)
    except ValueError as error:
        fail("parameters", str(error))


def _image_size(spec: TensorSpec, layout: str, fail: _Fail) -> tuple[int, int]:
    """(height, width) of an image input: FP32 [-1, 3, H, W] (NCHW) or [-1, H, W, 3] (NHWC)."""
    shape = spec.shape
    expected = "[-1, 3, H, W]" if layout != "NHWC" else "[-1, H, W, 3]"
    channels, height, width = (
        (shape[1], shape[2], shape[3]) if layout != "NHWC" else (shape[3], shape[1], shape[2])
    ) if len(shape) == 4 else (0, 0, 0)  # fmt: skip
    if spec.datatype != "FP32" or channels != 3 or VARIABLE in (height, width) or height == 0:
        fail(
            IMAGE_INPUT_PARAMETER,
            f"input {spec.name!r} is {spec.datatype} {list(shape)}: an image input must be "
            f"FP32 {expected} with a fixed height and width",
        )
    return height, width


def _positive(parameters: Mapping[str, str], key: str, fail: _Fail) -> int | None:
    text = parameters.get(key)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        fail(key, f"must be a whole number >= 1, not {text!r}")
    return value
