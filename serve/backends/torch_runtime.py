"""Process-wide PyTorch settings, set in one place by the torch backends."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

__all__ = ["configure_torch"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems; blocks below it come from the heap.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def configure_torch(threads: int) -> None:
    """Intra-op threads (one pool per process in PyTorch) and memory that stays mapped."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    _keep_freed_memory_mapped()


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
