"""A model's settings from its config.pbtxt, as plain Python: what the rest of the server reads.

Only ``serve.repository.model_config`` knows protobuf; it builds these. Shapes are full shapes
(the batch axis, -1, first when ``max_batch_size > 0``), as ``serve.signature`` expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serve.repository.versions import VersionPolicy
from serve.tensors import TensorSpec

__all__ = [
    "BACKEND_FIELDS",
    "DEFAULT_MODEL_FILENAMES",
    "FACTORY_PARAMETER",
    "IMAGE_INPUT_PARAMETER",
    "PLATFORMS",
    "PLATFORM_OF",
    "SOFTMAX_PARAMETER",
    "SUFFIX_BACKENDS",
    "THREADS_PARAMETER",
    "ModelSettings",
]

# config.pbtxt's `platform` and `backend` values we serve, and the backend that runs each.
PLATFORMS: Mapping[str, str] = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "torchscript",
    "torch_aoti": "torch_export",
    "torch_export": "torch_export",
    # Ours: a Python factory that builds the nn.Module.
    "pytorch_eager": "eager",
}
BACKEND_FIELDS: Mapping[str, str] = {
    "onnxruntime": "onnxruntime",
    "pytorch": "torchscript",
    "torch_aoti": "torch_export",
    "torch_export": "torch_export",
    "pytorch_eager": "eager",
}
# The platform the ModelConfig RPC reports for each backend.
PLATFORM_OF: Mapping[str, str] = {
    "onnxruntime": "onnxruntime_onnx",
    "torchscript": "pytorch_libtorch",
    "torch_export": "torch_export",
    "eager": "pytorch_eager",
}
# The model file of a version folder, unless `default_model_filename` says otherwise.
DEFAULT_MODEL_FILENAMES: Mapping[str, str] = {
    "onnxruntime": "model.onnx",
    "torchscript": "model.pt",
    "torch_export": "model.pt2",
    "eager": "weights.pt",
}
# Our `parameters` keys (string values) beside the image pre-processing ones, which
# export.manifest.Preprocessing reads and writes.
# The input fed from encoded images: the model is then an image model for every API.
IMAGE_INPUT_PARAMETER = "image_input"
# An output holding logits, served as `probabilities` (softmax) instead.
SOFTMAX_PARAMETER = "softmax"
# The eager backend's `package.module:function` that builds the nn.Module its weights.pt fills.
FACTORY_PARAMETER = "factory"
# Intra-op threads per instance (Triton's ONNX Runtime backend reads the same key).
THREADS_PARAMETER = "intra_op_thread_count"
# Which backend a model file is for, when config.pbtxt doesn't say. Not `.pth` or `weights.pt`:
# a state dict needs a factory to build its module (`FACTORY_PARAMETER`).
SUFFIX_BACKENDS: Mapping[str, str] = {
    ".onnx": "onnxruntime",
    ".pt": "torchscript",
    ".pt2": "torch_export",
}


@dataclass(frozen=True)
class ModelSettings:
    # The model's folder name (config.pbtxt's `name`, when set, is checked against it).
    name: str
    # One of DEFAULT_MODEL_FILENAMES' keys; None until the model file decides it (no platform or
    # backend in config.pbtxt). A scanned ModelEntry always has it.
    backend: str | None = None
    # 0: no batch axis (Triton's meaning). Otherwise the most rows per batch.
    max_batch_size: int = 0
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # config.pbtxt is missing or lists no inputs or no outputs: the missing ones come from the
    # model file (Triton's auto-complete), and so may max_batch_size.
    complete_from_model: bool = True
    # Model instances (the sum over instance groups, a group's count defaulting to 1); None: the
    # server's default for the backend.
    instances: int | None = None
    # `dynamic_batching` is present. Its delay in seconds and its preferred sizes.
    dynamic_batching: bool = False
    max_queue_delay: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    # dynamic_batching.default_queue_policy.max_queue_size; 0: the server's default (never
    # unbounded here, unlike Triton's 0).
    max_queue_size: int = 0
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # Output name -> its label_filename: a file in the model folder, one label a line.
    label_files: Mapping[str, str] = field(default_factory=dict)
    # `parameters`: Triton's string values, for what it has no field for (pre-processing, say).
    parameters: Mapping[str, str] = field(default_factory=dict)
    # The model file's name inside each version folder; "" for the backend's default.
    default_model_filename: str = ""
    # The parsed inference.ModelConfig (an empty one without config.pbtxt), as written: the
    # ModelConfig RPC starts from it. Don't modify it: copy it (CopyFrom) first.
    config: Any = field(default=None, compare=False, repr=False)

    @property
    def model_filename(self) -> str | None:
        """The model file's name in a version folder, when config.pbtxt decides it."""
        if self.default_model_filename:
            return self.default_model_filename
        return DEFAULT_MODEL_FILENAMES[self.backend] if self.backend else None
