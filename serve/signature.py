"""A model's signature: its named inputs and outputs, and the checks a request must pass.

Shapes are full shapes as the KServe v2 protocol reports them: a batching model's first axis is
VARIABLE (-1), and so is any other axis of variable size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serve.errors import InvalidArgument, shortened
from serve.tensors import VARIABLE, Tensor, TensorSpec

__all__ = ["Signature", "check_inputs"]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Most rows per batch the model takes; 0 = the model has no batch axis (Triton's meaning).
    max_batch_size: int = 0

    def __post_init__(self) -> None:
        for specs in (self.inputs, self.outputs):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate tensor names in {names}")
        if self.max_batch_size:
            for spec in (*self.inputs, *self.outputs):
                if not spec.shape or spec.shape[0] != VARIABLE:
                    raise ValueError(f"{spec.name}: a batching model's first axis must be -1")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self.outputs)
        raise InvalidArgument(f"unknown output {shortened(name)} (outputs: {known})")


def check_inputs(
    specs: Sequence[TensorSpec], tensors: Sequence[Tensor], batching: bool
) -> dict[str, np.ndarray]:
    """The request's tensors by name, once each matches its spec: the same set of names, the
    datatype, the rank and every fixed dimension; with ``batching``, one batch size for all."""
    by_name: dict[str, Tensor] = {}
    for tensor in tensors:
        if tensor.name in by_name:
            raise InvalidArgument(f"input {shortened(tensor.name)} is given twice")
        by_name[tensor.name] = tensor
    expected = {spec.name for spec in specs}
    unknown = [name for name in by_name if name not in expected]
    if unknown:
        raise InvalidArgument(
            f"unknown input {shortened(unknown[0])} (inputs: {', '.join(sorted(expected))})"
        )
    missing = sorted(expected - set(by_name))
    if missing:
        raise InvalidArgument(f"missing input(s): {', '.join(missing)}")
    rows: set[int] = set()
    for spec in specs:
        tensor = by_name[spec.name]
        _check_tensor(spec, tensor)
        if batching:
            rows.add(tensor.shape[0])
    if len(rows) > 1:
        raise InvalidArgument(f"inputs disagree on the batch size: {sorted(rows)}")
    if batching and 0 in rows:
        raise InvalidArgument("the batch is empty (first dimension 0)")
    return {name: tensor.data for name, tensor in by_name.items()}


def _check_tensor(spec: TensorSpec, tensor: Tensor) -> None:
    name = shortened(spec.name)
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(f"input {name}: datatype {tensor.datatype}, expected {spec.datatype}")
    if not _shape_matches(spec.shape, tensor.shape):
        raise InvalidArgument(
            f"input {name}: shape {list(tensor.shape)}, expected {list(spec.shape)} (-1 = any size)"
        )


def _shape_matches(expected: Sequence[int], actual: Sequence[int]) -> bool:
    return len(expected) == len(actual) and all(
        e in (VARIABLE, a) for e, a in zip(expected, actual, strict=True)
    )


def row_count(tensors: Mapping[str, np.ndarray]) -> int:
    """Rows of a batch: the first axis, which every tensor shares."""
    return int(next(iter(tensors.values())).shape[0])
