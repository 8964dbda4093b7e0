"""The classification front: class probabilities, top-k labels, and Triton's classification
extension ("score:index:label" strings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.errors import InvalidArgument

__all__ = ["ClassScores", "Label", "check_k", "softmax"]


@dataclass(frozen=True)
class Label:
    class_id: int
    name: str
    probability: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise probabilities, computed in float64 and returned as float32 (the wire's type)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted, dtype=np.float64)
    probabilities: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probabilities


@dataclass(frozen=True)
class ClassScores:
    """A model output holding one score per class, with the classes' names.

    A model that computes logits (``source``, with ``softmax``) has them served as probabilities
    under ``name``, so no caller has to post-process; other scores are served as they are.
    """

    name: str
    source: str
    labels: tuple[str, ...]
    softmax: bool = True

    def probabilities(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs with the logits replaced by probabilities; runs on the model's
        thread, once per batch."""
        if not self.softmax:
            return dict(outputs)
        served = {name: array for name, array in outputs.items() if name != self.source}
        served[self.name] = softmax(outputs[self.source])
        return served

    @staticmethod
    def top_classes(probabilities: np.ndarray) -> list[int]:
        """The tutorial's answer: the most probable class id of each row."""
        return [int(i) for i in probabilities.argmax(axis=1)]

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[Label]]:
        """Per row, the ``k`` most probable classes, best first."""
        return [
            [Label(int(c), self.labels[c], float(row[c])) for c in ranked]
            for row, ranked in zip(probabilities, _ranked(probabilities, k), strict=True)
        ]

    def classification(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Triton's classification extension: per row, the ``k`` best as b"score:index:label",
        in a BYTES (object) array of shape (rows, k)."""
        ranked = _ranked(scores, k)
        out = np.empty(ranked.shape, dtype=object)
        for r, (row, best) in enumerate(zip(scores, ranked, strict=True)):
            for j, c in enumerate(best):
                out[r, j] = f"{row[c]:f}:{c}:{self.labels[c]}".encode()
        return out


def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` highest scores of each row, highest first."""
    # argpartition finds the k best in O(n); only those k are then sorted.
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1)


def check_k(k: int, labels: Sequence[str]) -> None:
    if not 1 <= k <= len(labels):
        raise InvalidArgument(f"top_k must be between 1 and {len(labels)}, got {k}")
