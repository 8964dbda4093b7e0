"""The KServe v2 tensor codec: exact round trips, the BYTES wire format, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from serve.errors import InvalidArgument
from serve.pb.kserve import grpc_service_pb2 as pb
from serve.services.kserve_tensors import (
    decode_request,
    deserialize_bytes_tensor,
    encode_response,
    serialize_bytes_tensor,
)
from serve.tensors import DATATYPES, InferResponse, RequestedOutput, Tensor

Input = pb.ModelInferRequest.InferInputTensor


def sample(datatype: str) -> np.ndarray:
    """A 2x3 array of ``datatype`` holding its extremes, as numpy sees them."""
    if datatype == "BYTES":
        return np.array([[b"", b"a", b"\x00\xff"], [b"xyz", "é".encode(), b"0" * 300]], object)
    dtype = DATATYPES[datatype].dtype
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1], [info.max, info.max - 1, 7]], dtype)
    info_f = np.finfo(dtype)
    return np.array([[info_f.min, -0.0, info_f.tiny], [info_f.max, 1.5, -np.inf]], dtype)


def as_request(response: pb.ModelInferResponse) -> pb.ModelInferRequest:
    """A request whose inputs are exactly the response's outputs, in the same form."""
    request = pb.ModelInferRequest(model_name="m", raw_input_contents=response.raw_output_contents)
    for output in response.outputs:
        tensor = request.inputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if output.HasField("contents"):
            tensor.contents.CopyFrom(output.contents)
    return request


def request_with(*inputs: Input, raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=inputs, raw_input_contents=raw or [])


def refusal(request: pb.ModelInferRequest) -> str:
    with pytest.raises(InvalidArgument) as caught:
        decode_request(request)
    return caught.value.message


def assert_same(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.dtype == expected.dtype
    assert decoded.shape == expected.shape
    if decoded.dtype == object:
        assert decoded.tolist() == expected.tolist()
    else:  # bitwise, so -0.0 and the extremes count
        assert decoded.tobytes() == expected.tobytes()


# ---- Round trips ----


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_raw_round_trip_is_exact(datatype: str) -> None:
    array = sample(datatype)
    response = encode_response(
        InferResponse("m", "1", (Tensor("OUT", datatype, array),), id="r7"), raw=True
    )
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("OUT", datatype, [2, 3])
    assert not output.HasField("contents")
    expected_blob = (
        serialize_bytes_tensor(array) if datatype == "BYTES" else array.tobytes()
    )  # what tritonclient sends and reads: numpy's bytes, row-major, little-endian
    assert list(response.raw_output_contents) == [expected_blob]

    (tensor,) = decode_request(as_request(response)).inputs
    assert (tensor.name, tensor.datatype) == ("OUT", datatype)
    assert_same(tensor.data, array)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d != "FP16"])
def test_contents_round_trip_is_exact(datatype: str) -> None:
    array = sample(datatype)
    response = encode_response(
        InferResponse("m", "1", (Tensor("OUT", datatype, array),)), raw=False
    )
    assert list(response.raw_output_contents) == []
    contents = response.outputs[0].contents
    filled = [field.name for field, _ in contents.ListFields()]
    field = {
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
        "BYTES": "bytes_contents",
    }[datatype]
    assert filled == [field]
    assert list(getattr(contents, field)) == array.ravel().tolist()

    (tensor,) = decode_request(as_request(response)).inputs
    assert_same(tensor.data, array)


def test_fp16_output_sends_every_output_raw_so_positions_align() -> None:
    outputs = (
        Tensor("A", "FP32", np.array([1.0, 2.0], "<f4")),
        Tensor("B", "FP16", np.array([0.5], "<f2")),
        Tensor("C", "BYTES", np.array([b"hi"], object)),
    )
    response = encode_response(InferResponse("m", "1", outputs), raw=False)
    assert [o.HasField("contents") for o in response.outputs] == [False, False, False]
    assert list(response.raw_output_contents) == [
        np.array([1.0, 2.0], "<f4").tobytes(),
        np.array([0.5], "<f2").tobytes(),
        b"\x02\x00\x00\x00hi",
    ]


def test_response_echoes_model_version_id_and_output_parameters() -> None:
    tensor = Tensor(
        "OUT",
        "INT64",
        np.array([3], "<i8"),
        {"flag": True, "n": -2, "big": 2**64 - 1, "x": 0.25, "s": "v"},
    )
    response = encode_response(InferResponse("resnet", "3", (tensor,), id="abc"), raw=True)
    assert (response.model_name, response.model_version, response.id) == ("resnet", "3", "abc")
    parameters = response.outputs[0].parameters
    assert {k: p.WhichOneof("parameter_choice") for k, p in parameters.items()} == {
        "flag": "bool_param",
        "n": "int64_param",
        "big": "uint64_param",
        "x": "double_param",
        "s": "string_param",
    }
    assert parameters["big"].uint64_param == 2**64 - 1


def test_raw_encoding_is_row_major_little_endian_for_any_layout() -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3).T  # big-endian and not C-contiguous
    response = encode_response(InferResponse("m", "1", (Tensor("T", "FP32", array),)), raw=True)
    assert response.raw_output_contents[0] == np.array([0, 3, 1, 4, 2, 5], "<f4").tobytes()
    assert list(response.outputs[0].shape) == [3, 2]


def test_output_whose_data_does_not_match_its_datatype_is_a_server_bug() -> None:
    tensor = Tensor("OUT", "FP32", np.zeros(2, "<f8"))
    with pytest.raises(ValueError, match="output 'OUT': data of dtype float64 does not match"):
        encode_response(InferResponse("m", "1", (tensor,)), raw=True)


def test_raw_numeric_input_is_a_read_only_view_of_the_blob() -> None:
    request = request_with(Input(name="X", datatype="INT32", shape=[2]), raw=[b"\1\0\0\0\2\0\0\0"])
    (tensor,) = decode_request(request).inputs
    assert tensor.data.tolist() == [1, 2]
    base = tensor.data
    while isinstance(base, np.ndarray):  # views of views of the request's own bytes
        base = base.base
    assert isinstance(base, bytes)
    assert not tensor.data.flags.writeable


def test_empty_tensors_decode_in_both_forms() -> None:
    raw = request_with(Input(name="E", datatype="FP32", shape=[0, 3]), raw=[b""])
    contents = request_with(Input(name="E", datatype="BYTES", shape=[2, 0]))
    assert decode_request(raw).inputs[0].data.shape == (0, 3)
    assert decode_request(contents).inputs[0].data.shape == (2, 0)


# ---- Request fields ----


def test_request_fields_and_parameters_become_plain_values() -> None:
    request = pb.ModelInferRequest(
        model_name="resnet",
        model_version="2",
        id="req-1",
        parameters={
            "sequence_start": pb.InferParameter(bool_param=True),
            "timeout": pb.InferParameter(int64_param=-5),
            "sequence_id": pb.InferParameter(string_param="s1"),
            "temperature": pb.InferParameter(double_param=0.5),
            "priority": pb.InferParameter(uint64_param=2**64 - 1),
        },
        inputs=[
            Input(
                name="X",
                datatype="FP32",
                shape=[1],
                parameters={"p": pb.InferParameter(int64_param=4)},
                contents=pb.InferTensorContents(fp32_contents=[2.5]),
            )
        ],
    )
    decoded = decode_request(request)
    assert (decoded.model, decoded.version, decoded.id) == ("resnet", "2", "req-1")
    parameters = dict(decoded.parameters)
    assert parameters == {
        "sequence_start": True,
        "timeout": -5,
        "sequence_id": "s1",
        "temperature": 0.5,
        "priority": 2**64 - 1,
    }
    assert [type(parameters[k]) for k in ("sequence_start", "timeout", "temperature")] == [
        bool,
        int,
        float,
    ]
    assert dict(decoded.inputs[0].parameters) == {"p": 4}
    assert decoded.outputs == ()


def test_requested_outputs_with_classification() -> None:
    Output = pb.ModelInferRequest.InferRequestedOutputTensor
    request = pb.ModelInferRequest(
        outputs=[
            Output(name="PROBS"),
            Output(name="TOP3", parameters={"classification": pb.InferParameter(int64_param=3)}),
            Output(name="TOP1", parameters={"classification": pb.InferParameter(uint64_param=1)}),
        ]
    )
    assert decode_request(request).outputs == (
        RequestedOutput("PROBS", 0),
        RequestedOutput("TOP3", 3),
        RequestedOutput("TOP1", 1),
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (pb.InferParameter(int64_param=0), "0"),
        (pb.InferParameter(int64_param=-2), "-2"),
        (pb.InferParameter(bool_param=True), "True"),
        (pb.InferParameter(double_param=2.0), "2.0"),
        (pb.InferParameter(string_param="3"), "'3'"),
    ],
)
def test_classification_must_be_an_integer_of_at_least_one(
    value: pb.InferParameter, shown: str
) -> None:
    output = pb.ModelInferRequest.InferRequestedOutputTensor(
        name="OUT", parameters={"classification": value}
    )
    assert refusal(pb.ModelInferRequest(outputs=[output])) == (
        f"output 'OUT': classification must be an integer >= 1, got {shown}"
    )


# ---- BYTES wire format ----


def test_serialize_bytes_tensor_is_tritonclients_format() -> None:
    array = np.array([[b"", "é"], [b"ab", b"\x00"]], object)
    assert serialize_bytes_tensor(array) == (
        b"\x00\x00\x00\x00"
        + b"\x02\x00\x00\x00\xc3\xa9"
        + b"\x02\x00\x00\x00ab"
        + b"\x01\x00\x00\x00\x00"
    )
    assert serialize_bytes_tensor(np.array([b"ab", b"c"], "S2")) == b"\2\0\0\0ab\1\0\0\0c"
    assert serialize_bytes_tensor(np.array([], object)) == b""


def test_deserialize_bytes_tensor_edge_cases() -> None:
    decoded = deserialize_bytes_tensor(b"\0\0\0\0\3\0\0\0abc\0\0\0\0\1\0\0\0z", [2, 2], "T")
    assert decoded.dtype == object
    assert decoded.tolist() == [[b"", b"abc"], [b"", b"z"]]
    assert deserialize_bytes_tensor(b"", [0], "T").shape == (0,)
    assert deserialize_bytes_tensor(b"\0\0\0\0", [1, 1], "T").tolist() == [[b""]]


@pytest.mark.parametrize(
    ("blob", "shape", "reason"),
    [
        (b"\1\0\0\0a\2\0", [2], "BYTES element 1 has a truncated length prefix (2 of 4 bytes)"),
        (b"\5\0\0\0abc", [1], "BYTES element 0 claims 5 bytes, only 3 remain"),
        (b"\1\0\0\0ab", [1], "raw data has 1 bytes after the last of 1 BYTES elements"),
        (b"\0\0\0\0", [0], "raw data has 4 bytes after the last of 0 BYTES elements"),
        (b"\1\0\0\0a", [3], "raw data holds 1 BYTES elements, the shape needs 3"),
        (b"", [2], "raw data holds 0 BYTES elements, the shape needs 2"),
        (b"\0\0\0\0", [2**40], "raw data holds 1 BYTES elements, the shape needs 1099511627776"),
    ],
)
def test_malformed_bytes_blobs_are_refused_naming_the_tensor(
    blob: bytes, shape: list[int], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        deserialize_bytes_tensor(blob, shape, "T")
    assert caught.value.message == f"tensor 'T': {reason}"
    request = request_with(Input(name="IMAGE", datatype="BYTES", shape=shape), raw=[blob])
    assert refusal(request) == f"input 'IMAGE': {reason}"


# ---- Refusals ----

LONG = "n" * 100
LONG_SHOWN = "'" + "n" * 63 + "…'"

REFUSALS: dict[str, tuple[pb.ModelInferRequest, str]] = {
    "unknown datatype": (
        request_with(Input(name="X", datatype="fp32", shape=[1]), raw=[b"\0" * 4]),
        "input 'X': unknown datatype 'fp32' (known: BOOL, UINT8, UINT16, UINT32, UINT64, INT8,"
        " INT16, INT32, INT64, FP16, FP32, FP64, BYTES)",
    ),
    "BF16": (
        request_with(Input(name="X", datatype="BF16", shape=[1]), raw=[b"\0" * 2]),
        "input 'X': datatype BF16 is not supported",
    ),
    "negative dimension": (
        request_with(Input(name="X", datatype="FP32", shape=[2, -1]), raw=[b""]),
        "input 'X': shape [2, -1] has a negative dimension",
    ),
    "too many dimensions": (
        request_with(Input(name="X", datatype="FP32", shape=[1] * 33), raw=[b"\0" * 4]),
        "input 'X': 33 dimensions, at most 32 are supported",
    ),
    "duplicate input": (
        request_with(
            Input(name="X", datatype="INT8", shape=[1]),
            Input(name="X", datatype="INT8", shape=[1]),
            raw=[b"\0", b"\0"],
        ),
        "input 'X' is given twice",
    ),
    "raw count below inputs": (
        request_with(
            Input(name="X", datatype="INT8", shape=[1]),
            Input(name="Y", datatype="INT8", shape=[1]),
            raw=[b"\0"],
        ),
        "the request has 1 raw_input_contents for 2 inputs; each input needs exactly one",
    ),
    "raw count above inputs": (
        request_with(Input(name="X", datatype="INT8", shape=[1]), raw=[b"\0", b"\0"]),
        "the request has 2 raw_input_contents for 1 inputs; each input needs exactly one",
    ),
    "raw and contents": (
        request_with(
            Input(name="X", datatype="INT8", shape=[1]),
            Input(
                name="Y",
                datatype="INT8",
                shape=[1],
                contents=pb.InferTensorContents(int_contents=[1]),
            ),
            raw=[b"\0", b"\0"],
        ),
        "input 'Y': contents must be empty when the request uses raw_input_contents",
    ),
    "raw size": (
        request_with(Input(name="X", datatype="FP32", shape=[2, 2]), raw=[b"\0" * 12]),
        "input 'X': raw data is 12 bytes, shape [2, 2] of FP32 needs 16",
    ),
    "raw data too long": (
        request_with(Input(name="X", datatype="UINT8", shape=[3]), raw=[b"\0" * 4]),
        "input 'X': raw data is 4 bytes, shape [3] of UINT8 needs 3",
    ),
    "raw size of a huge shape": (
        request_with(Input(name="X", datatype="FP64", shape=[2**40]), raw=[b"\0" * 8]),
        "input 'X': raw data is 8 bytes, shape [1099511627776] of FP64 needs 8796093022208",
    ),
    "empty tensor numpy can't shape": (
        request_with(Input(name="X", datatype="FP32", shape=[0, 2**62]), raw=[b""]),
        "input 'X': shape [0, 4611686018427387904] is too large",
    ),
    "contents count": (
        request_with(
            Input(
                name="X",
                datatype="FP32",
                shape=[2, 2],
                contents=pb.InferTensorContents(fp32_contents=[1, 2, 3]),
            )
        ),
        "input 'X': fp32_contents has 3 elements, shape [2, 2] needs 4",
    ),
    "contents of a huge shape": (
        request_with(
            Input(
                name="X",
                datatype="INT64",
                shape=[2**40],
                contents=pb.InferTensorContents(int64_contents=[1]),
            )
        ),
        "input 'X': int64_contents has 1 elements, shape [1099511627776] needs 1099511627776",
    ),
    "contents in the wrong field": (
        request_with(
            Input(
                name="X",
                datatype="FP32",
                shape=[1],
                contents=pb.InferTensorContents(fp64_contents=[1.0]),
            )
        ),
        "input 'X': fp32_contents has 0 elements, shape [1] needs 1"
        " (FP32 goes in fp32_contents, not fp64_contents)",
    ),
    "FP16 contents": (
        request_with(Input(name="X", datatype="FP16", shape=[1])),
        "input 'X': FP16 has no contents field; send it in raw_input_contents",
    ),
    "INT8 out of range": (
        request_with(
            Input(
                name="X",
                datatype="INT8",
                shape=[2],
                contents=pb.InferTensorContents(int_contents=[1, 300]),
            )
        ),
        "input 'X': int_contents value 300 is out of range for INT8",
    ),
    "UINT16 out of range": (
        request_with(
            Input(
                name="X",
                datatype="UINT16",
                shape=[1],
                contents=pb.InferTensorContents(uint_contents=[70000]),
            )
        ),
        "input 'X': uint_contents value 70000 is out of range for UINT16",
    ),
    "parameter without a value": (
        request_with(
            Input(
                name="X",
                datatype="INT8",
                shape=[0],
                parameters={"p": pb.InferParameter()},
            )
        ),
        "input 'X': parameter 'p' has no value",
    ),
    "request parameter without a value": (
        pb.ModelInferRequest(parameters={"q": pb.InferParameter()}),
        "parameter 'q' has no value",
    ),
    "shared memory input": (
        request_with(
            Input(
                name="X",
                datatype="INT8",
                shape=[1],
                parameters={"shared_memory_region": pb.InferParameter(string_param="r")},
            )
        ),
        "input 'X': shared memory is not supported",
    ),
    "shared memory output": (
        pb.ModelInferRequest(
            outputs=[
                pb.ModelInferRequest.InferRequestedOutputTensor(
                    name="O",
                    parameters={"shared_memory_region": pb.InferParameter(string_param="r")},
                )
            ]
        ),
        "output 'O': shared memory is not supported",
    ),
    "duplicate requested output": (
        pb.ModelInferRequest(
            outputs=[
                pb.ModelInferRequest.InferRequestedOutputTensor(name="O"),
                pb.ModelInferRequest.InferRequestedOutputTensor(name="O"),
            ]
        ),
        "output 'O' is requested twice",
    ),
    "long names are shortened": (
        request_with(Input(name=LONG, datatype=LONG, shape=[1]), raw=[b""]),
        f"input {LONG_SHOWN}: unknown datatype {LONG_SHOWN} (known: BOOL, UINT8, UINT16, UINT32,"
        " UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES)",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_malformed_requests_are_refused_naming_the_tensor(case: str) -> None:
    request, message = REFUSALS[case]
    assert refusal(request) == message
