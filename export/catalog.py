"""The names of the models and where the sample photos are: what the server and the tools need
to know of the zoo without importing PyTorch."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_MODEL", "MODEL_NAMES", "SAMPLE_IMAGES"]

DEFAULT_MODEL = "efficientnet_lite0"
MODEL_NAMES = ("efficientnet_lite0", "resnet34")
# Real photos the export checks parity on and the benchmarks send.
SAMPLE_IMAGES = Path(__file__).resolve().parent / "sample_images"
