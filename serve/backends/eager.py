"""Eager PyTorch: the zoo's architecture with the exported weights (loaded with weights_only)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.manifest import WEIGHTS_NAME, Manifest
from export.zoo import get_spec
from serve.backends.torch_runtime import PinnedModule, manifest_specs

__all__ = ["EagerBackend"]


class EagerBackend:
    name = "eager"
    threads_per_instance = False

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        def load() -> nn.Module:
            state = torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
            return get_spec(manifest.model).build_with(state)

        self.inputs, self.outputs = manifest_specs(manifest)
        self._module = PinnedModule(load, threads, self.inputs, self.outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._module.run(inputs)
