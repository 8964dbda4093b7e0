"""The zoo's models as eager factories (``export.zoo.factories:resnet34``): untrained
architectures, in eval mode, that the eager backend loads the exported weights.pt into.

One zero-argument function a model, named after it, so a config.pbtxt can name it."""

from __future__ import annotations

from torch import nn

from export.zoo import get_spec

__all__ = ["efficientnet_lite0", "resnet34"]


def efficientnet_lite0() -> nn.Module:
    return get_spec("efficientnet_lite0").build().eval()


def resnet34() -> nn.Module:
    return get_spec("resnet34").build().eval()
