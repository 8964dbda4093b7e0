"""Do the exported forms compute what eager computes? Measured on real images."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from export.manifest import Parity

__all__ = ["Logits", "measure_parity"]

Logits = Callable[[np.ndarray], np.ndarray]


def measure_parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Max abs difference of the logits, and whether every image keeps its top-1 class."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logits shape {candidate.shape} != eager's {reference.shape}")
    return Parity(
        max_abs_diff=float(np.abs(reference - candidate).max()),
        top1_equal=bool((reference.argmax(axis=1) == candidate.argmax(axis=1)).all()),
        images=int(reference.shape[0]),
    )
