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
        # (12.5 -> 10.4 ms in-process). They keep spinning for about 40 ms after a run, so the
        # request that follows does not wake them on a sleeping core: with
        # `session.force_spinning_stop` off instead of on, c1 over gRPC went 11.7 -> 11.2 ms and
        # 12.9 -> 11.6 ms in two side-by-side runs, while c4 and c32 throughput were unchanged.
        # Single-threaded sessions, the server's default under load, have no threads to spin.
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if threads > 1 else "0"
        )
        self._session = onnxruntime.InferenceSession(
            str(folder / ONNX_NAME), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = tensor_specs(self._session.get_inputs())
        self.outputs = tensor_specs(self._session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))
