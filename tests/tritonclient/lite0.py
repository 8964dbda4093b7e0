"""What the served model should answer: its name, the test images with its top-1 class and
probability for each (tests/images/EXPECTED.md), and the pre-processing that turns an image into
its ``input`` tensor."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "efficientnet_lite0"
IMAGES = Path(__file__).resolve().parents[1] / "images"
EGYPTIAN_CAT, ESPRESSO = 285, 967
# Agreement with EXPECTED.md's figures: the server decodes and resizes with its own code.
TOLERANCE = 2e-3


@dataclass(frozen=True)
class Photo:
    name: str
    label: int
    label_name: str
    probability: float

    @property
    def data(self) -> bytes:
        return (IMAGES / self.name).read_bytes()

    def tensor(self) -> np.ndarray:
        """efficientnet_lite0's pre-processed input, as its manifest prescribes: RGB resized to
        224x224 (bilinear), then (rgb - 127) / 128 per channel, NCHW float32, batch of one."""
        image = Image.open(io.BytesIO(self.data)).convert("RGB")
        rgb = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32)
        return ((rgb - 127.0) / 128.0).transpose(2, 0, 1)[np.newaxis].copy()


CAT_JPG = Photo("cat.jpg", EGYPTIAN_CAT, "Egyptian cat", 0.8117)
CAT_PNG = Photo("cat.png", EGYPTIAN_CAT, "Egyptian cat", 0.7912)
COFFEE_JPG = Photo("coffee.jpg", ESPRESSO, "espresso", 0.8923)
PHOTOS = (CAT_JPG, CAT_PNG, COFFEE_JPG)
