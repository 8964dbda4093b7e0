"""KServe v2 tensors on the wire: the only place protobuf tensors become numpy arrays and back.

``decode_request`` turns a ``ModelInferRequest`` into a plain ``InferRequest`` and checks every
tensor against what the request itself claims (datatype, shape, byte counts) before it allocates
anything, so a request never costs more memory than its own size. ``encode_response`` turns an
``InferResponse`` into a ``ModelInferResponse``, either in raw form (``raw_output_contents``, one
blob per output, which tritonclient reads) or in the typed ``contents`` fields.

Raw tensors are flattened row-major and little-endian; a BYTES tensor is its elements in order,
each prefixed with its length as a 4-byte little-endian unsigned integer (tritonclient's
``serialize_byte_tensor``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from serve.errors import InvalidArgument, shortened
from serve.pb.kserve import grpc_service_pb2 as pb
from serve.tensors import (
    BYTES,
    DATATYPES,
    Datatype,
    InferRequest,
    InferResponse,
    RequestedOutput,
    Tensor,
    datatype_of,
)

__all__ = [
    "CLASSIFICATION",
    "MAX_DIMS",
    "decode_request",
    "deserialize_bytes_tensor",
    "encode_response",
    "serialize_bytes_tensor",
]

# The requested-output parameter of Triton's classification extension: the top k classes.
CLASSIFICATION = "classification"
# Most dimensions a tensor may have (numpy 1.x's limit; numpy 2 allows 64).
MAX_DIMS = 32
# Datatypes with no typed contents field: they travel only raw.
_RAW_ONLY = frozenset({"FP16", "BF16"})
# The typed contents field of each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
# Triton's shared-memory parameters: we hold no regions, so a tensor naming one can't be served.
_SHARED_MEMORY = "shared_memory_region"
_PREFIX = struct.Struct("<I")
_INT64 = range(-(2**63), 2**63)
_UINT64 = range(2**64)


# ---- Request: protobuf -> plain types ----


def decode_request(message: pb.ModelInferRequest) -> InferRequest:
    """The request as plain types; INVALID_ARGUMENT (naming the tensor) if it is malformed."""
    return InferRequest(
        model=message.model_name,
        version=message.model_version,
        id=message.id,
        inputs=_decode_inputs(message),
        outputs=_decode_requested_outputs(message.outputs),
        parameters=_parameters(message.parameters, ""),
    )


def _decode_inputs(message: pb.ModelInferRequest) -> tuple[Tensor, ...]:
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidArgument(
            f"the request has {len(raw)} raw_input_contents for {len(message.inputs)} inputs;"
            " each input needs exactly one"
        )
    tensors: list[Tensor] = []
    names: set[str] = set()
    for index, tensor in enumerate(message.inputs):
        label = f"input {shortened(tensor.name)}"
        if tensor.name in names:
            raise InvalidArgument(f"{label} is given twice")
        names.add(tensor.name)
        parameters = _parameters(tensor.parameters, label)
        if _SHARED_MEMORY in parameters:
            raise InvalidArgument(f"{label}: shared memory is not supported")
        datatype = _datatype(tensor.datatype, label)
        shape = _shape(tensor.shape, label)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"{label}: contents must be empty when the request uses raw_input_contents"
                )
            data = _from_raw(raw[index], datatype, shape, label)
        else:
            data = _from_contents(tensor.contents, datatype, shape, label)
        tensors.append(Tensor(tensor.name, datatype.name, data, parameters))
    return tuple(tensors)


def _decode_requested_outputs(
    outputs: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor],
) -> tuple[RequestedOutput, ...]:
    requested: list[RequestedOutput] = []
    names: set[str] = set()
    for output in outputs:
        label = f"output {shortened(output.name)}"
        if output.name in names:
            raise InvalidArgument(f"{label} is requested twice")
        names.add(output.name)
        parameters = _parameters(output.parameters, label)
        if _SHARED_MEMORY in parameters:
            raise InvalidArgument(f"{label}: shared memory is not supported")
        requested.append(RequestedOutput(output.name, _classification(parameters, label)))
    return tuple(requested)


def _classification(parameters: Mapping[str, Any], label: str) -> int:
    """The requested top-k of the classification extension; 0 when not asked for."""
    if CLASSIFICATION not in parameters:
        return 0
    k = parameters[CLASSIFICATION]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        shown = shortened(k) if isinstance(k, str) else repr(k)
        raise InvalidArgument(f"{label}: {CLASSIFICATION} must be an integer >= 1, got {shown}")
    return k


def _parameters(parameters: Mapping[str, pb.InferParameter], label: str) -> dict[str, Any]:
    """InferParameters as plain values: bool, int (int64 or uint64), float or str."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is None:
            where = f"{label}: " if label else ""
            raise InvalidArgument(f"{where}parameter {shortened(key)} has no value")
        values[key] = getattr(parameter, choice)
    return values


def _datatype(name: str, label: str) -> Datatype:
    datatype = DATATYPES.get(name)
    if datatype is not None:
        return datatype
    if name == "BF16":
        raise InvalidArgument(f"{label}: datatype BF16 is not supported")
    known = ", ".join(DATATYPES)
    raise InvalidArgument(f"{label}: unknown datatype {shortened(name)} (known: {known})")


def _shape(dims: Sequence[int], label: str) -> tuple[int, ...]:
    if len(dims) > MAX_DIMS:
        raise InvalidArgument(f"{label}: {len(dims)} dimensions, at most {MAX_DIMS} are supported")
    shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{label}: shape {list(shape)} has a negative dimension")
    return shape


def _reshaped(flat: np.ndarray, shape: tuple[int, ...], label: str) -> np.ndarray:
    try:
        return flat.reshape(shape)
    except ValueError:  # an empty tensor whose dimensions numpy can't represent
        raise InvalidArgument(f"{label}: shape {list(shape)} is too large") from None


def _from_raw(blob: bytes, datatype: Datatype, shape: tuple[int, ...], label: str) -> np.ndarray:
    count = math.prod(shape)
    if datatype.name == BYTES:
        return _reshaped(_split_bytes(blob, count, label), shape, label)
    expected = count * datatype.size
    if len(blob) != expected:
        raise InvalidArgument(
            f"{label}: raw data is {len(blob)} bytes, shape {list(shape)} of {datatype.name}"
            f" needs {expected}"
        )
    return _reshaped(np.frombuffer(blob, datatype.dtype), shape, label)


def _from_contents(
    contents: pb.InferTensorContents, datatype: Datatype, shape: tuple[int, ...], label: str
) -> np.ndarray:
    if datatype.name in _RAW_ONLY:
        raise InvalidArgument(
            f"{label}: {datatype.name} has no contents field; send it in raw_input_contents"
        )
    field = _CONTENTS_FIELD[datatype.name]
    values = getattr(contents, field)
    count = math.prod(shape)
    # Compared before anything is allocated: the values are already in the request.
    if len(values) != count:
        others = [f.name for f, _ in contents.ListFields() if f.name != field]
        hint = f" ({datatype.name} goes in {field}, not {', '.join(others)})" if others else ""
        raise InvalidArgument(
            f"{label}: {field} has {len(values)} elements, shape {list(shape)} needs {count}{hint}"
        )
    if datatype.name == BYTES:
        flat = np.empty(count, dtype=object)
        flat[:] = list(values)
    else:
        flat = _checked_array(list(values), datatype, field, label)
    return _reshaped(flat, shape, label)


def _checked_array(values: list[Any], datatype: Datatype, field: str, label: str) -> np.ndarray:
    """``values`` as ``datatype``; the integers that don't fit (say 300 for INT8) are refused."""
    if datatype.dtype.kind in "iu" and values:
        info = np.iinfo(datatype.dtype)
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidArgument(
                f"{label}: {field} value {bad} is out of range for {datatype.name}"
            )
    return np.array(values, dtype=datatype.dtype)


# ---- Response: plain types -> protobuf ----


def encode_response(response: InferResponse, *, raw: bool) -> pb.ModelInferResponse:
    """The response as protobuf. With ``raw`` (pass it when the request used raw inputs) every
    output goes in ``raw_output_contents``; without, in typed ``contents``, unless some output has
    no contents field (FP16): then all go raw, since raw blobs are matched to outputs by position.
    """
    all_raw = raw or any(tensor.datatype in _RAW_ONLY for tensor in response.outputs)
    message = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    blobs: list[bytes] = []
    for tensor in response.outputs:
        datatype = _output_datatype(tensor)
        output = message.outputs.add(name=tensor.name, datatype=datatype.name, shape=tensor.shape)
        _set_parameters(output.parameters, tensor.parameters, f"output {shortened(tensor.name)}")
        if all_raw:
            blobs.append(_to_raw(tensor.data, datatype))
        else:
            _fill_contents(output.contents, tensor.data, datatype)
    message.raw_output_contents.extend(blobs)
    return message


def _output_datatype(tensor: Tensor) -> Datatype:
    """The output's datatype, which its data must have: a mismatch is a bug of the server."""
    datatype = DATATYPES.get(tensor.datatype)
    if datatype is None or datatype_of(tensor.data) != datatype:
        raise ValueError(
            f"output {shortened(tensor.name)}: data of dtype {tensor.data.dtype} does not match"
            f" datatype {tensor.datatype!r}"
        )
    return datatype


def _to_raw(data: np.ndarray, datatype: Datatype) -> bytes:
    if datatype.name == BYTES:
        return serialize_bytes_tensor(data)
    # One copy, row-major and little-endian whatever the array's layout or byte order.
    return np.asarray(data, dtype=datatype.dtype).tobytes()


def _fill_contents(contents: pb.InferTensorContents, data: np.ndarray, datatype: Datatype) -> None:
    values = getattr(contents, _CONTENTS_FIELD[datatype.name])
    if datatype.name == BYTES:
        values.extend(_elements(data))
    else:
        values.extend(data.ravel().tolist())


def _set_parameters(target: Any, parameters: Mapping[str, Any], label: str) -> None:
    """Plain values into ``target``, a protobuf map of InferParameter."""
    for key, value in parameters.items():
        parameter = target[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int) and value in _INT64:
            parameter.int64_param = value
        elif isinstance(value, int) and value in _UINT64:
            parameter.uint64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        elif isinstance(value, str):
            parameter.string_param = value
        else:
            raise TypeError(f"{label}: parameter {key!r} = {value!r} has no InferParameter kind")


# ---- BYTES tensors ----


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor as one raw blob: each element (``bytes``, or ``str`` as UTF-8) in row-major
    order, prefixed with its length as a 4-byte little-endian unsigned integer."""
    parts: list[bytes] = []
    for element in _elements(array):
        if len(element) >= 2**32:
            raise ValueError(f"a BYTES element of {len(element)} bytes exceeds 4 GiB - 1")
        parts.append(_PREFIX.pack(len(element)))
        parts.append(element)
    return b"".join(parts)


def deserialize_bytes_tensor(blob: bytes, shape: Sequence[int], name: str) -> np.ndarray:
    """The BYTES tensor ``name`` of ``shape`` from its raw blob, as an object array of ``bytes``;
    INVALID_ARGUMENT unless the length-prefixed elements exactly cover the blob and fill shape."""
    label = f"tensor {shortened(name)}"
    shape = _shape(shape, label)
    return _reshaped(_split_bytes(blob, math.prod(shape), label), shape, label)


def _elements(array: np.ndarray) -> list[bytes]:
    """A BYTES array's elements in row-major order, as bytes."""
    elements: list[bytes] = []
    for element in array.ravel().tolist():
        if isinstance(element, bytes):
            elements.append(element)
        elif isinstance(element, str):
            elements.append(element.encode())
        else:
            raise TypeError(f"a BYTES element must be bytes or str, not {type(element).__name__}")
    return elements


def _split_bytes(blob: bytes, count: int, label: str) -> np.ndarray:
    """The ``count`` length-prefixed elements of ``blob``, flat. At most ``count`` elements are
    read, and each takes at least 4 bytes of the blob, so memory stays bounded by the blob."""
    elements: list[bytes] = []
    offset, end = 0, len(blob)
    while offset < end and len(elements) < count:
        index = len(elements)
        if end - offset < _PREFIX.size:
            raise InvalidArgument(
                f"{label}: BYTES element {index} has a truncated length prefix"
                f" ({end - offset} of 4 bytes)"
            )
        (length,) = _PREFIX.unpack_from(blob, offset)
        offset += _PREFIX.size
        if length > end - offset:
            raise InvalidArgument(
                f"{label}: BYTES element {index} claims {length} bytes, only {end - offset} remain"
            )
        elements.append(blob[offset : offset + length])
        offset += length
    if len(elements) < count:
        raise InvalidArgument(
            f"{label}: raw data holds {len(elements)} BYTES elements, the shape needs {count}"
        )
    if offset < end:
        raise InvalidArgument(
            f"{label}: raw data has {end - offset} bytes after the last of {count} BYTES elements"
        )
    flat = np.empty(count, dtype=object)
    flat[:] = elements
    return flat
