"""Eager PyTorch: the zoo's architecture with the exported weights (loaded with weights_only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.manifest import WEIGHTS_NAME, Manifest
from export.zoo import get_spec
from serve.backends.torch_runtime import configure_torch

__all__ = ["EagerBackend"]


class EagerBackend:
    name = "eager"
    threads_per_instance = False

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        configure_torch(threads)
        state = torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
        self._module = get_spec(manifest.model).build_with(state)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits: np.ndarray = self._module(torch.from_numpy(batch)).numpy()
        return logits
