"""TorchScript: a traced or scripted module (model.pt); needs no Python model code.

A TorchScript file doesn't record its tensors' names, datatypes or shapes: config.pbtxt gives
them, in the order the module's forward takes and returns them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from serve.backends.base import BackendSpec, first_sentence, require_declared
from serve.backends.torch_runtime import Loaded, PinnedModule
from serve.errors import ArtifactError

__all__ = ["TorchScriptBackend"]

OPTIMIZE_PARAMETER = "torchscript_optimize"


class TorchScriptBackend:
    name = "torchscript"
    max_rows: int | None = None
    threads_per_instance = False

    def __init__(self, spec: BackendSpec) -> None:
        require_declared(spec, "a TorchScript model")
        optimize = _flag(spec.parameters, OPTIMIZE_PARAMETER)

        def load() -> Loaded:
            with warnings.catch_warnings():
                # torch.jit is deprecated upstream; TorchScript artifacts are what our user asked
                # for. (Once, at load time: catch_warnings is not thread-safe in general.)
                warnings.simplefilter("ignore", FutureWarning)
                try:
                    module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
                        str(spec.model_file), map_location="cpu"
                    ).eval()
                except RuntimeError as error:
                    raise ArtifactError(
                        f"{spec.model_file.name} is not a TorchScript file: {first_sentence(error)}"
                    ) from None
                if optimize:
                    # The export measured it faster on this kind of machine (export.convert).
                    module = torch.jit.optimize_for_inference(module)
            return module, spec.inputs, spec.outputs

        self._module = PinnedModule(load, spec.threads)
        self.inputs, self.outputs = self._module.inputs, self._module.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._module.run(inputs)


def _flag(parameters: Mapping[str, str], key: str) -> bool:
    value = parameters.get(key, "false").strip().lower()
    if value not in ("true", "false"):
        raise ArtifactError(f"config.pbtxt: parameters {key}: must be true or false, not {value!r}")
    return value == "true"
