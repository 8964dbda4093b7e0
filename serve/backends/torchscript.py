"""TorchScript: the traced, frozen module from the export stage; needs no Python model code."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from export.manifest import TORCHSCRIPT_NAME, Manifest
from serve.backends.torch_runtime import PinnedModule, manifest_specs

__all__ = ["TorchScriptBackend"]


class TorchScriptBackend:
    name = "torchscript"
    threads_per_instance = False

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        def load() -> torch.jit.ScriptModule:
            with warnings.catch_warnings():
                # torch.jit is deprecated upstream; TorchScript artifacts are what our user asked
                # for. (Once, at load time: catch_warnings is not thread-safe in general.)
                warnings.simplefilter("ignore", FutureWarning)
                path = str(folder / TORCHSCRIPT_NAME)
                module: torch.jit.ScriptModule = torch.jit.load(path, map_location="cpu").eval()  # type: ignore[no-untyped-call]
                if manifest.torchscript_optimized:
                    # The export measured it faster on this kind of machine (export.convert).
                    module = torch.jit.optimize_for_inference(module)
            return module

        self.inputs, self.outputs = manifest_specs(manifest)
        self._module = PinnedModule(load, threads, self.inputs, self.outputs)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._module.run(inputs)
