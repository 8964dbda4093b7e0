"""PyTorch's intra-op thread count is per process, so torch backends set it in one place."""

from __future__ import annotations

import torch

__all__ = ["set_torch_threads"]


def set_torch_threads(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
