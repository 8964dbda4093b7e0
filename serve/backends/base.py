"""The one small interface every backend implements: named tensors in, named tensors out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from serve.tensors import TensorSpec

__all__ = ["Backend"]


class Backend(Protocol):
    """A loaded model instance. ``run`` blocks: the server calls it from the instance's thread."""

    name: str
    # Whether each instance has its own intra-op thread pool (ONNX Runtime sessions do; PyTorch's
    # is one per process), which is what makes several instances plus a solo one worthwhile.
    threads_per_instance: bool
    # What the model file computes, in order; VARIABLE (-1) where any size goes.
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every input by name (rows along the first axis); returns every output by name."""
        ...
