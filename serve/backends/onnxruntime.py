"""ONNX Runtime on the CPU: the fastest backend on this kind of machine for both bundled models.

The signature comes from the session itself: input and output names, element types and shapes
(symbolic dimensions are variable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from export.manifest import ONNX_NAME, Manifest
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
    threads_per_instance = True

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # A session with several intra-op threads hands work between them at every operator:
        # letting them spin instead of sleeping made a lone Lite0 image 1.5-2 ms faster here
        # (12.5 -> 10.4 ms in-process). But by default they go on spinning for tens of ms after a
        # run, and a server at a few requests a second paid 86-105 ms of CPU per request for it,
        # against 21-25 ms at saturation. Spinning at most 500 us for more work, and stopping
        # when a run ends, brought that to 1.3-1.4 x saturation (benchmarks/idle_cpu.py, 2 and
        # 10 requests a second) with c1 p50 unchanged within noise (15.8 vs 15.4 and 15.8 vs
        # 18.1 ms, side by side in alternating rounds on a loaded machine). Single-threaded
        # sessions, the server's default under load, have no threads to spin.
        if threads > 1:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1")
            options.add_session_config_entry("session.intra_op.spin_duration_us", "500")
            options.add_session_config_entry("session.force_spinning_stop", "1")
        else:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(folder / ONNX_NAME), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = tensor_specs(self._session.get_inputs())
        self.outputs = tensor_specs(self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))
