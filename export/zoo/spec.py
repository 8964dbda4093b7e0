"""What the zoo knows of a model: how to build it, where its weights come from, how to feed it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from export.manifest import Preprocessing

__all__ = ["RANDOM", "LoadedWeights", "ModelSpec", "WeightsUnavailable", "state_dict_sha256"]

# The WEIGHTS value that asks for untrained weights (seeded, so repeatable): for latency work
# where the real weights can't be had.
RANDOM = "random"
_RANDOM_SEED = 0

StateDict = dict[str, torch.Tensor]


class WeightsUnavailable(Exception):
    """The requested weights can't be had here; the message says what to do instead."""


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: StateDict
    # A short human-readable origin: "torchvision:IMAGENET1K_V1", "pypi:...", "random", "file:...".
    source: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    # Builds the architecture with untrained weights.
    build: Callable[[], nn.Module]
    # Loads the model's own pretrained weights (cache, package or download).
    pretrained: Callable[[], LoadedWeights]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.preprocessing.height, self.preprocessing.width)

    def load_weights(self, weights: str | None) -> LoadedWeights:
        """``None``/"" = the model's pretrained weights, "random", or a path to a state dict."""
        if not weights:
            return self.pretrained()
        if weights == RANDOM:
            torch.manual_seed(_RANDOM_SEED)
            return LoadedWeights(self.build().state_dict(), RANDOM)
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise WeightsUnavailable(f"WEIGHTS={weights}: no such file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return LoadedWeights(state, f"file:{path}")

    def build_with(self, state_dict: StateDict) -> nn.Module:
        """The eval-mode model with ``state_dict`` loaded strictly (a mismatch is an error)."""
        model = self.build()
        model.load_state_dict(state_dict, strict=True)
        return model.eval()


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A hash of the weights' values, independent of how the file was serialised."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
