"""The one small interface every backend implements: logits for a batch of pre-processed images."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Backend"]


class Backend(Protocol):
    """A loaded model instance. ``run`` blocks: the server calls it from the instance's thread."""

    name: str
    # Whether each instance has its own intra-op thread pool (ONNX Runtime sessions do; PyTorch's
    # is one per process), which is what makes several instances plus a solo one worthwhile.
    threads_per_instance: bool

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``batch``: float32 (N, 3, H, W); returns float32 logits (N, classes)."""
        ...
