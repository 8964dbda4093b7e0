"""ResNet34, the tutorial's model, from torchvision with its ImageNet weights."""

from __future__ import annotations

from urllib.error import URLError

from torch import nn
from torchvision.models import ResNet34_Weights, resnet34

from export.manifest import Preprocessing
from export.zoo.imagenet import IMAGENET_LABELS, IMAGENET_MEAN_0_255, IMAGENET_STD_0_255
from export.zoo.spec import LoadedWeights, ModelSpec, WeightsUnavailable

__all__ = ["RESNET34"]

_WEIGHTS = ResNet34_Weights.IMAGENET1K_V1


def _build() -> nn.Module:
    model: nn.Module = resnet34(weights=None)
    return model


def _pretrained() -> LoadedWeights:
    """torchvision's own weights API: the torch hub cache first, else a download."""
    try:
        state = _WEIGHTS.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as exc:
        file_name = _WEIGHTS.url.rsplit("/", 1)[-1]
        raise WeightsUnavailable(
            f"resnet34's ImageNet weights can't be downloaded here ({type(exc).__name__}). "
            f"Place {file_name} in $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch), "
            "pass WEIGHTS=path/to/state_dict.pth, use WEIGHTS=random for latency work, "
            "or use the default model (MODEL=efficientnet_lite0)."
        ) from None
    return LoadedWeights(state, f"torchvision:{_WEIGHTS}")


RESNET34 = ModelSpec(
    name="resnet34",
    # The tutorial resizes straight to 224x224 (no centre crop) and keeps that here.
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN_0_255, IMAGENET_STD_0_255),
    labels=IMAGENET_LABELS,
    build=_build,
    pretrained=_pretrained,
)
