"""ONNX Runtime on the CPU: the fastest backend on this kind of machine for both bundled models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from export.manifest import ONNX_NAME, Manifest

__all__ = ["OnnxRuntimeBackend"]


class OnnxRuntimeBackend:
    name = "onnxruntime"
    threads_per_instance = True

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores that decode the next images.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(folder / ONNX_NAME), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = self._session.run(None, {self._input: batch})[0]
        return logits
