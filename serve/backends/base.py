"""The one small interface every backend implements (named tensors in, named tensors out), and
what loading one takes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from serve.errors import ArtifactError
from serve.tensors import VARIABLE, TensorSpec

__all__ = ["Backend", "BackendSpec", "first_sentence", "reconciled", "require_declared"]


class Backend(Protocol):
    """A loaded model instance. ``run`` blocks: the server calls it from the instance's thread."""

    name: str
    # Whether each instance has its own intra-op thread pool (ONNX Runtime sessions do; PyTorch's
    # is one per process), which is what makes several instances plus a solo one worthwhile.
    threads_per_instance: bool
    # What the model file computes, in order; VARIABLE (-1) where any size goes.
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # The most rows one run takes, when the model file bounds its batch axis (a torch.export
    # program's Dim max); None: no bound known.
    max_rows: int | None

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input by name (rows along the first axis); returns every output by name."""
        ...


@dataclass(frozen=True)
class BackendSpec:
    """What to load: one version's model file, and what its config.pbtxt says of it."""

    backend: str  # one of serve.backends.BACKENDS
    model_file: Path  # model.onnx, model.pt, model.pt2 or weights.pt
    threads: int
    # Declared in config.pbtxt, full shapes (a batching model's first axis -1). Optional where
    # the file records them (onnxruntime, torch_export programs); required where it doesn't.
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    # config.pbtxt's parameters: factory, torchscript_optimize.
    parameters: Mapping[str, str] = field(default_factory=dict)
    # Whether code from the repository may run (Python factories outside export.zoo).
    allow_python_factories: bool = False


def require_declared(spec: BackendSpec, what: str) -> None:
    """Refuses a model whose file doesn't record its signature when config.pbtxt doesn't give it."""
    if not spec.inputs or not spec.outputs:
        raise ArtifactError(f"config.pbtxt must list the inputs and outputs of {what}")


def reconciled(kind: str, declared: TensorSpec, found: TensorSpec) -> TensorSpec:
    """The declared tensor once checked against the model file's: the same datatype and rank, and
    the same size on every axis fixed on both sides. Axes fixed on one side only keep that size."""
    where = f"{kind} {declared.name!r}"
    if declared.datatype != found.datatype:
        raise ArtifactError(
            f"{where}: config.pbtxt declares {declared.datatype}, the model has {found.datatype}"
        )
    if len(declared.shape) != len(found.shape) or any(
        VARIABLE not in (d, f) and d != f for d, f in zip(declared.shape, found.shape, strict=False)
    ):
        raise ArtifactError(
            f"{where}: config.pbtxt declares shape {list(declared.shape)}, the model has "
            f"{list(found.shape)} (-1 = any size)"
        )
    pairs = zip(declared.shape, found.shape, strict=True)
    return TensorSpec(
        declared.name, declared.datatype, tuple(f if d == VARIABLE else d for d, f in pairs)
    )


def first_sentence(error: BaseException) -> str:
    """A library's error message cut to its first sentence, for a one-line ArtifactError."""
    text = str(error).strip() or type(error).__name__
    return re.split(r"(?<=\.)\s", text.splitlines()[0], maxsplit=1)[0]
