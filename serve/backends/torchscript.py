"""TorchScript: the traced, frozen module from the export stage; needs no Python model code."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from export.manifest import TORCHSCRIPT_NAME, Manifest
from serve.backends.torch_runtime import configure_torch

__all__ = ["TorchScriptBackend"]


class TorchScriptBackend:
    name = "torchscript"
    threads_per_instance = False

    def __init__(self, folder: Path, manifest: Manifest, threads: int) -> None:
        configure_torch(threads)
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream; TorchScript artifacts are what our user asked for.
            warnings.simplefilter("ignore", FutureWarning)
            path = str(folder / TORCHSCRIPT_NAME)
            module = torch.jit.load(path, map_location="cpu").eval()  # type: ignore[no-untyped-call]
            if manifest.torchscript_optimized:
                # The export measured it faster on this kind of machine (see export.convert).
                module = torch.jit.optimize_for_inference(module)
        self._module = module

    def run(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits: np.ndarray = self._module(torch.from_numpy(batch)).numpy()
        return logits
