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
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        logits: np.ndarray = self._session.run(None, {self._input: batch})[0]
        return logits
