"""The model zoo: every model torchgrpc can export, by name. Shared by export and serve."""

from __future__ import annotations

from export.catalog import DEFAULT_MODEL, MODEL_NAMES
from export.zoo.lite0 import EFFICIENTNET_LITE0
from export.zoo.resnet34 import RESNET34
from export.zoo.spec import RANDOM, LoadedWeights, ModelSpec, WeightsUnavailable

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "RANDOM",
    "LoadedWeights",
    "ModelSpec",
    "WeightsUnavailable",
    "get_spec",
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (EFFICIENTNET_LITE0, RESNET34)}
assert tuple(MODELS) == MODEL_NAMES, "export.catalog must list the zoo's models"


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r} (known: {', '.join(sorted(MODELS))})") from None
