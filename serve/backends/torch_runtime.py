"""What the PyTorch backends share: process-wide settings, and a module pinned to one thread."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from serve.tensors import DATATYPES, TensorSpec

__all__ = ["Loaded", "PinnedModule", "TorchModule"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems; blocks below it come from the heap.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024

TorchModule = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
# A loaded module with its inputs and outputs, in the order it takes and returns them.
Loaded = tuple[TorchModule, tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


class PinnedModule:
    """A torch module loaded, configured and always run on one thread of its own.

    PyTorch's OpenMP keeps one thread team per calling thread, and the idle team of one thread
    spins on the cores the other is computing on: a model loaded on one thread and run on
    another ran at half speed here (Lite0 TorchScript, batch 1: 42 ms instead of 18 ms).
    ``run`` may be called from any thread; the work always happens on this one.
    """

    def __init__(self, load: Callable[[], Loaded], threads: int) -> None:
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="torch")
        try:
            loading = self._thread.submit(self._setup, load, threads)
            self._module, self.inputs, self.outputs = loading.result()
        except BaseException:
            self._thread.shutdown()
            raise

    @staticmethod
    def _setup(load: Callable[[], Loaded], threads: int) -> Loaded:
        # OpenMP's thread count is a per-thread setting: set it on the thread that computes.
        torch.set_num_threads(threads)
        _keep_freed_memory_mapped()
        return load()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._thread.submit(self._forward, inputs).result()

    def _forward(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Positional, in the signature's order: TorchScript modules take no names.
        # from_numpy keeps the dtype (INT64 stays int64). A tensor that arrived as read-only wire
        # bytes is copied: PyTorch wants writable memory.
        arguments = [
            torch.from_numpy(array if array.flags.writeable else array.copy())
            for array in (inputs[spec.name] for spec in self.inputs)
        ]
        with torch.inference_mode():
            results = self._module(*arguments)
        if isinstance(results, torch.Tensor):
            results = (results,)
        if len(results) != len(self.outputs):
            raise RuntimeError(
                f"the module returned {len(results)} outputs, not {len(self.outputs)}"
            )
        arrays = {spec.name: t.numpy() for spec, t in zip(self.outputs, results, strict=True)}
        for spec in self.outputs:
            if arrays[spec.name].dtype != DATATYPES[spec.datatype].dtype:
                raise RuntimeError(
                    f"output {spec.name!r} is {arrays[spec.name].dtype}, the signature says "
                    f"{spec.datatype}"
                )
        return arrays


@functools.cache
def _keep_freed_memory_mapped() -> None:
    """A forward pass frees each layer's activations, and glibc hands such large blocks back to
    the kernel, so the next batch page-faults them in again: for Lite0 at batch 8 that cost more
    than the arithmetic (268 ms a batch instead of 120 ms here). Keeping them mapped bounds the
    process's memory by one batch's peak. Not glibc (musl, macOS): nothing to do."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
