"""The test repository's models (tests/tritonclient/build_repository.py builds them): their names,
labels, and the fixed inputs whose answers the builder computes with the eager modules.

numpy only: both sides import it, the builder under the server's Python and the tests under
tritonclient's. The inputs are made with exact arithmetic (no random generator), so the two
virtualenvs' numpy versions make the same bytes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

LITE0 = "efficientnet_lite0"
# A torchvision MobileNetV3-Small with seeded random weights, traced to TorchScript.
CLASSIFIER = "mobilenet_v3_small"
# Two inputs (FP32 a [N, 4], INT64 b [N, 3]), two outputs (mixed [N, 3], total [N, 1]), in ONNX.
PAIR = "pair"
PAIR_BATCH = 3
# A torch.export program (model.pt2) with a dynamic batch axis: features [N, 6] in, output__0
# [N, 3] and output__1 [N, 1] out.
PROGRAM = "program"
PROGRAM_BATCHES = (1, 5)
# A folder whose model.onnx is not ONNX.
BROKEN = "broken"
SERVED = (CLASSIFIER, LITE0, PAIR, PROGRAM)

CLASSIFIER_LABELS = (
    "apple", "banana", "cherry", "date", "elderberry",
    "fig", "grape", "honeydew", "kiwi", "lemon",
)  # fmt: skip
# The images the classifier's answers are computed for (tests/images).
CLASSIFIER_IMAGE = "cat.jpg"
EXPECTED_NAME = "expected.json"
# The pair model's second version, written beside the repository for the swap test to copy in.
PAIR_VERSION_2_NAME = "pair_version_2.onnx"


def pattern(shape: tuple[int, ...], salt: int) -> NDArray[np.float32]:
    """Values in [-1, 1] that look random enough for a network, the same on every machine."""
    count = int(np.prod(shape))
    steps = (np.arange(count, dtype=np.int64) * 7919 + salt) % 2001
    return (steps / 1000.0 - 1.0).astype(np.float32).reshape(shape)


def classifier_input() -> NDArray[np.float32]:
    """Two pre-processed images' worth of input for the classifier."""
    return pattern((2, 3, 224, 224), salt=1)


def pair_inputs(batch: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    a = pattern((batch, 4), salt=2)
    b = (np.arange(batch * 3, dtype=np.int64).reshape(batch, 3) % 7) - 3
    return a, b


def program_input(batch: int) -> NDArray[np.float32]:
    return pattern((batch, 6), salt=3 + batch)
