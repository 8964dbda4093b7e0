"""The two conversions: eager -> TorchScript (traced, frozen, optimised when faster) and -> ONNX."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from export.fingerprint import ONNX_OPSET

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "TORCH_DATATYPES",
    "export_onnx",
    "torchscript_is_wanted",
    "trace_torchscript",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# The protocol's datatype of each torch dtype that has one (bfloat16, complex numbers have none).
TORCH_DATATYPES: Mapping[torch.dtype, str] = {
    torch.bool: "BOOL",
    torch.uint8: "UINT8",
    torch.uint16: "UINT16",
    torch.uint32: "UINT32",
    torch.uint64: "UINT64",
    torch.int8: "INT8",
    torch.int16: "INT16",
    torch.int32: "INT32",
    torch.int64: "INT64",
    torch.float16: "FP16",
    torch.float32: "FP32",
    torch.float64: "FP64",
}


@contextmanager
def torchscript_is_wanted() -> Iterator[None]:
    """Silences the warnings that torch.jit and the TorchScript-based ONNX exporter give on every
    use: they are deprecated upstream, but our user asked for TorchScript artifacts on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # The static TF-style padding traces to Slice ops the exporter can't fold; harmless.
        warnings.filterwarnings("ignore", "Constant folding", UserWarning)
        yield


def trace_torchscript(
    model: nn.Module, example: torch.Tensor
) -> tuple[torch.jit.ScriptModule, bool]:
    """Traces and freezes ``model``, and says whether ``optimize_for_inference`` makes it faster.

    The frozen module is what gets saved: an optimised one may hold MKLDNN constants that
    ``torch.jit.load`` can't read back in another process, so the server optimises at load time
    when the manifest says it pays.
    """
    with torchscript_is_wanted(), torch.no_grad():
        frozen = torch.jit.freeze(_trace(model, example))
        optimized = torch.jit.optimize_for_inference(torch.jit.freeze(_trace(model, example)))
        faster = _seconds_per_call(optimized, example) < 0.95 * _seconds_per_call(frozen, example)
    return frozen, faster


def _trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    traced: torch.jit.ScriptModule = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    return traced.eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Writes ONNX with a dynamic batch axis, so one file serves every batch size."""
    with torchscript_is_wanted(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def _seconds_per_call(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """Best of a few timed calls after warm-up (the first calls of a TorchScript module compile)."""
    for _ in range(2):
        module(x)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        module(x)
        best = min(best, time.perf_counter() - start)
    return best
