"""JPEG draft mode on a big photo: decode + pre-process time with and without it, same answer.

Measured by `make benchmark` (benchmarks/run.py).
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.ceiling import open_image_model
from export.catalog import SAMPLE_IMAGES
from export.manifest import Preprocessing
from serve.backends import run_single
from serve.imaging import ImageLimits, load_image

__all__ = ["DraftResult", "big_photo", "measure_draft"]

SIZE = (1600, 1067)


@dataclass(frozen=True)
class DraftResult:
    draft_ms: float
    full_ms: float
    same_top1: bool

    @property
    def speed_up(self) -> float:
        return self.full_ms / self.draft_ms


def big_photo() -> bytes:
    """The coffee photo at 1600x1067, JPEG quality 90: a typical phone-camera-sized upload."""
    image = (
        Image.open(SAMPLE_IMAGES / "coffee.jpg")
        .convert("RGB")
        .resize(SIZE, Image.Resampling.BICUBIC)
    )
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _median_ms(data: bytes, limits: ImageLimits, pre: Preprocessing, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        load_image(data, 0, limits, pre)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def measure_draft(repository: Path, name: str, runs: int = 50) -> DraftResult:
    """``big_photo`` through ``repository/name``'s pre-processing, with and without draft mode."""
    data = big_photo()
    draft, full = ImageLimits(draft=True), ImageLimits(draft=False)
    model = open_image_model(repository, name, "onnxruntime", 1)
    pre = model.preprocessing
    batch = np.stack([load_image(data, 0, limits, pre) for limits in (draft, full)])
    top1 = run_single(model.backend, batch).argmax(axis=1)
    return DraftResult(
        draft_ms=_median_ms(data, draft, pre, runs),
        full_ms=_median_ms(data, full, pre, runs),
        same_top1=bool(top1[0] == top1[1]),
    )
