"""ImageNet-1k: class names (torchvision's bundled metadata, no download) and statistics."""

from __future__ import annotations

from torchvision.models import ResNet34_Weights

__all__ = ["IMAGENET_LABELS", "IMAGENET_MEAN_0_255", "IMAGENET_STD_0_255"]

IMAGENET_LABELS: tuple[str, ...] = tuple(ResNet34_Weights.IMAGENET1K_V1.meta["categories"])

# torchvision's ImageNet normalisation, scaled to 0-255 pixels.
IMAGENET_MEAN_0_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_0_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
