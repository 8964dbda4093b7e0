"""ONNX Runtime on the CPU: the fastest backend on this kind of machine for both bundled models.

The signature comes from the session itself: input and output names, element types and shapes
(symbolic dimensions are variable). What config.pbtxt declares must agree with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime

from serve.backends.base import BackendSpec, first_sentence, reconciled
from serve.errors import ArtifactError
from serve.tensors import VARIABLE, TensorSpec

__all__ = ["OnnxRuntimeBackend", "tensor_specs"]

# ONNX element types, as ONNX Runtime names them, to the protocol's datatypes.
_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


# "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /m/1/model.onnx failed:"
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .* failed:)?")


def tensor_specs(args: Sequence[Any]) -> tuple[TensorSpec, ...]:
    """ONNX Runtime's NodeArgs as TensorSpecs; refuses element types the protocol can't carry."""
    specs = []
    for arg in args:
        datatype = _DATATYPES.get(arg.type)
        if datatype is None:
            raise ArtifactError(f"ONNX tensor {arg.name!r} has type {arg.type}, not servable")
        shape = tuple(d if isinstance(d, int) and d >= 0 else VARIABLE for d in arg.shape)
        specs.append(TensorSpec(arg.name, datatype, shape))
    return tuple(specs)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    max_rows: int | None = None
    threads_per_instance = True

    def __init__(self, spec: BackendSpec) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A session with several intra-op threads hands work between them at every operator, and
        # threads that spin briefly instead of sleeping pick up each hand-off sooner. ONNX
        # Runtime's default spin also goes on for about 40 ms after every run: a quiet server
        # spent 84-89 ms of CPU per lone image at 2 and 10 requests a second, 3.6-3.9 x the
        # 22-23 ms an image costs at saturation (benchmarks/idle_cpu.py). Spinning at most 500 us
        # at a time, and not at all once a run ends, brought that to 30-37 ms (1.23-1.48 x), and
        # c1 p50 from 17.4 to 15.9 ms over 37 alternating rounds: on two cores the thread left
        # spinning held the core the reply and the next request needed. c32 throughput was
        # unchanged. ONNX Runtime versions without `spin_duration_us` ignore it, and
        # `force_spinning_stop` still ends the spinning after each run. Single-threaded
        # sessions, the server's default under load, have no threads to spin.
        if spec.threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1")
            options.add_session_config_entry("session.intra_op.spin_duration_us", "500")
            options.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = onnxruntime.InferenceSession(
                str(spec.model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ONNX Runtime's errors derive from Exception alone
            raise ArtifactError(
                f"{spec.model_file.name} is not a model ONNX Runtime can load: {_reason(error)}"
            ) from None
        self.inputs = _declared(
            "input", spec.inputs, tensor_specs(self._session.get_inputs()), every=True
        )
        self.outputs = _declared("output", spec.outputs, tensor_specs(self._session.get_outputs()))
        self._output_names = [output.name for output in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))


def _declared(
    kind: str, declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], every: bool = False
) -> tuple[TensorSpec, ...]:
    """The tensors config.pbtxt declares, each checked against the session's (all the session's
    when it declares none). With ``every``, each of the session's tensors must be declared."""
    if not declared:
        return found
    by_name = {spec.name: spec for spec in found}
    for spec in declared:
        if spec.name not in by_name:
            raise ArtifactError(
                f"config.pbtxt declares {kind} {spec.name!r}, which the ONNX model doesn't have "
                f"(its {kind}s: {', '.join(by_name)})"
            )
    missing = set(by_name) - {spec.name for spec in declared}
    if every and missing:
        raise ArtifactError(f"config.pbtxt leaves out the ONNX model's {kind} {min(missing)!r}")
    return tuple(reconciled(kind, spec, by_name[spec.name]) for spec in declared)


def _reason(error: Exception) -> str:
    """ONNX Runtime's message without its code prefix: "Protobuf parsing failed."."""
    return _ORT_PREFIX.sub("", first_sentence(error))
