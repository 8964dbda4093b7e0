"""The one small interface every backend implements: logits for a batch of pre-processed images."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Backend"]


class Backend(Protocol):
    """A loaded model instance. ``run`` blocks: the server calls it from the instance's thread."""

    name: str

    def run(self, batch: np.ndarray) -> np.ndarray:
        """``batch``: float32 (N, 3, H, W); returns float32 logits (N, classes)."""
        ...
