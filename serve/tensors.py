"""Tensors in plain Python: the KServe v2 datatypes, and named tensors with their specs.

The wire adapters turn protobuf into these and back; everything below them (the core, the model
layer, the batcher) speaks only these and numpy arrays. BYTES tensors are numpy object arrays whose
elements are ``bytes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BYTES",
    "DATATYPES",
    "VARIABLE",
    "Datatype",
    "InferRequest",
    "InferResponse",
    "RequestedOutput",
    "Tensor",
    "TensorSpec",
    "datatype_of",
]

# A dimension of any size (the batch axis of a batching model, or a variable axis).
VARIABLE = -1
BYTES = "BYTES"


@dataclass(frozen=True)
class Datatype:
    """One of the protocol's datatype names, its numpy dtype (little-endian) and element size."""

    name: str
    dtype: np.dtype[Any]
    # Bytes per element on the wire; 0 for BYTES, whose elements are length-prefixed.
    size: int


def _numeric(name: str, dtype: str) -> Datatype:
    resolved = np.dtype(dtype)
    return Datatype(name, resolved, resolved.itemsize)


DATATYPES: Mapping[str, Datatype] = {
    datatype.name: datatype
    for datatype in (
        _numeric("BOOL", "?"),
        _numeric("UINT8", "u1"),
        _numeric("UINT16", "<u2"),
        _numeric("UINT32", "<u4"),
        _numeric("UINT64", "<u8"),
        _numeric("INT8", "i1"),
        _numeric("INT16", "<i2"),
        _numeric("INT32", "<i4"),
        _numeric("INT64", "<i8"),
        _numeric("FP16", "<f2"),
        _numeric("FP32", "<f4"),
        _numeric("FP64", "<f8"),
        Datatype(BYTES, np.dtype(object), 0),
    )
}
_BY_DTYPE = {d.dtype: d for d in DATATYPES.values() if d.name != BYTES}


def datatype_of(array: np.ndarray) -> Datatype:
    """The protocol datatype of a numpy array (native byte order counts as little-endian here)."""
    if array.dtype == object or array.dtype.kind == "S":
        return DATATYPES[BYTES]
    try:
        return _BY_DTYPE[array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no KServe datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: datatype and shape, VARIABLE (-1) where any size goes."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ValueError(f"tensor {self.name!r}: unknown datatype {self.datatype!r}")
        if any(d < VARIABLE for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: bad shape {list(self.shape)}")


@dataclass(frozen=True)
class Tensor:
    """A named tensor of a request or response: ``data`` has ``datatype``'s dtype and the shape."""

    name: str
    datatype: str
    data: np.ndarray
    # Per-tensor protocol parameters, as plain values (bool, int, float or str).
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    # Triton's classification extension: return the top ``classification`` classes as BYTES
    # "score:index[:label]" instead of the tensor; 0 = the tensor itself.
    classification: int = 0


@dataclass(frozen=True)
class InferRequest:
    model: str
    inputs: tuple[Tensor, ...]
    version: str = ""
    id: str = ""
    # Empty: every output of the model.
    outputs: tuple[RequestedOutput, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str
    outputs: tuple[Tensor, ...]
    id: str = ""
