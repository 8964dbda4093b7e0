"""Logits -> answers: softmax, top-k and class names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Label", "softmax", "top_classes", "top_k_labels"]


@dataclass(frozen=True)
class Label:
    class_id: int
    name: str
    probability: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def top_classes(logits: np.ndarray) -> list[int]:
    """The tutorial's answer: the arg-max class id of each image."""
    return [int(i) for i in logits.argmax(axis=1)]


def top_k_labels(logits: np.ndarray, k: int, names: Sequence[str]) -> list[list[Label]]:
    """Per image, the ``k`` most probable classes, best first."""
    probabilities = softmax(logits)
    # argpartition finds the k best in O(n); only those k are then sorted.
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    results = []
    for row, candidates in zip(probabilities, best, strict=True):
        ordered = candidates[np.argsort(-row[candidates], kind="stable")]
        results.append([Label(int(c), names[c], float(row[c])) for c in ordered])
    return results
