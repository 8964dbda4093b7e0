"""Backends by name, and loading one from a model file with its checks."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np

from serve.backends.base import Backend, BackendSpec
from serve.errors import ArtifactError

__all__ = [
    "BACKENDS",
    "ArtifactError",
    "Backend",
    "BackendSpec",
    "load_backend",
    "run_single",
]

BackendFactory = Callable[[BackendSpec], Backend]

# Imported only when used: a server on ONNX Runtime never loads PyTorch (about 1 GB less memory
# and seconds less start-up).
_IMPLEMENTATIONS = {
    "onnxruntime": ("serve.backends.onnxruntime", "OnnxRuntimeBackend"),
    "torchscript": ("serve.backends.torchscript", "TorchScriptBackend"),
    "torch_export": ("serve.backends.torch_export", "TorchExportBackend"),
    "eager": ("serve.backends.eager", "EagerBackend"),
}
BACKENDS: tuple[str, ...] = tuple(_IMPLEMENTATIONS)


def load_backend(spec: BackendSpec) -> Backend:
    """One instance of ``spec.model_file`` on ``spec.backend``; ArtifactError says why not."""
    try:
        module, name = _IMPLEMENTATIONS[spec.backend]
    except KeyError:
        raise ArtifactError(
            f"unknown backend {spec.backend!r} (known: {', '.join(BACKENDS)})"
        ) from None
    try:
        implementation = importlib.import_module(module)
    except ImportError as error:
        raise ArtifactError(
            f"the {spec.backend} backend needs {error.name or 'a missing package'}: "
            "pip install 'torchgrpc[torch]', or serve with --backend onnxruntime"
        ) from None
    factory: BackendFactory = getattr(implementation, name)
    return factory(spec)


def run_single(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """A single-input, single-output model (the bundled classifiers) on one array: for tools
    that time the model alone."""
    (tensor,) = backend.inputs
    (output,) = backend.outputs
    return backend.run({tensor.name: batch})[output.name]
