"""Eager PyTorch: a factory's module (``package.module:function``) with a state dict loaded into it.

The weights file is read with ``weights_only=True``: tensors, never pickled objects. A factory is
code, so only ours (under ``export.zoo.``) run unless the server allows Python factories.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from serve.backends.base import BackendSpec, first_sentence, require_declared
from serve.backends.torch_runtime import Loaded, PinnedModule
from serve.errors import ArtifactError

__all__ = ["EagerBackend"]

FACTORY_PARAMETER = "factory"
# Factories of this package's own model zoo: always allowed.
_OURS = "export.zoo."


class EagerBackend:
    name = "eager"
    max_rows: int | None = None
    threads_per_instance = False

    def __init__(self, spec: BackendSpec) -> None:
        require_declared(spec, "an eager model")
        factory = _allowed_factory(spec)

        def load() -> Loaded:
            model = _built(factory)
            _load_weights(model, spec.model_file)
            return model.eval(), spec.inputs, spec.outputs

        self._module = PinnedModule(load, spec.threads)
        self.inputs, self.outputs = self._module.inputs, self._module.outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._module.run(inputs)


def _allowed_factory(spec: BackendSpec) -> str:
    """The factory config.pbtxt names, once its form is right and it may run."""
    factory = spec.parameters.get(FACTORY_PARAMETER, "")
    where = f"config.pbtxt: parameters {FACTORY_PARAMETER}"
    if not factory:
        raise ArtifactError(f"{where}: an eager model needs one (package.module:function)")
    module, colon, function = factory.partition(":")
    if not (colon and _dotted(module) and _dotted(function)):
        raise ArtifactError(f"{where}: {factory!r} is not of the form package.module:function")
    if not module.startswith(_OURS) and not spec.allow_python_factories:
        raise ArtifactError(
            f"factory {factory}: running Python factories is off: start the server with "
            "--allow-python-factories"
        )
    return factory


def _dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _built(factory: str) -> nn.Module:
    """The factory's module: imported, then called with no arguments."""
    module, _, function = factory.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for attribute in function.split("."):
            target = getattr(target, attribute)
        model = target()
    except Exception as error:  # the user's code: whatever it raises, the model can't load
        raise ArtifactError(f"factory {factory}: {type(error).__name__}: {error}") from error
    if not isinstance(model, nn.Module):
        raise ArtifactError(
            f"factory {factory} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file makes torch.load raise all sorts
        raise ArtifactError(
            f"{path.name} can't be read as weights: {first_sentence(error)}"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ArtifactError(
            f"{path.name} holds a {type(state).__name__}, not a state dict of tensors "
            "(torch.save(model.state_dict(), ...))"
        )
    try:
        # Not strict, so that torch lists the keys; any missing or unexpected one is refused.
        keys = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape
        lines = str(error).strip().splitlines()
        raise ArtifactError(
            f"{path.name} doesn't fit the factory's module: {lines[-1].strip()}"
        ) from None
    if keys.missing_keys or keys.unexpected_keys:
        raise ArtifactError(
            f"{path.name} doesn't fit the factory's module: missing "
            f"{_few(keys.missing_keys)}; unexpected {_few(keys.unexpected_keys)}"
        )


def _few(names: Sequence[str], most: int = 3) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:most])
    return f"{shown} and {len(names) - most} more" if len(names) > most else shown
