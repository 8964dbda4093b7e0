"""The manifest: the one contract between the export stage and the server.

``artifacts/<model>/manifest.json`` says what was exported, from which weights, how images must be
pre-processed, what the classes are called, and how well the exported forms agree with eager.
``Preprocessing.apply`` is the executable form of the pre-processing it records, used by the export
stage on its sample photos and by the server on every request: one definition, not two copies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ONNX_NAME",
    "TORCHSCRIPT_NAME",
    "WEIGHTS_NAME",
    "Manifest",
    "Parity",
    "Preprocessing",
    "file_sha256",
    "modified_files",
    "read_manifest",
]

MANIFEST_NAME = "manifest.json"
TORCHSCRIPT_NAME = "model.torchscript.pt"
ONNX_NAME = "model.onnx"
WEIGHTS_NAME = "weights.pt"
# Bumped whenever the layout of the artifacts changes, so the server refuses stale folders.
MANIFEST_VERSION = 2


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``height`` x ``width``, then ``(rgb_0_255 - mean) / std``.

    ``resize`` names the filter (a ``PIL.Image.Resampling`` member; bilinear unless told). The
    fields are checked on construction, so a bad manifest fails when it is read, not on the first
    request.
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear"

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"preprocessing size must be positive, not {self.width}x{self.height}")
        if 0.0 in self.std:
            raise ValueError(f"preprocessing std must be non-zero, not {self.std}")
        _resample(self.resize)

    def apply(self, image: Image.Image) -> NDArray[np.float32]:
        """Resize an RGB image to this size, then return float32 CHW ``(rgb - mean) / std``.

        Bit-for-bit the same as ``Image.resize`` followed by float32 arithmetic, which is what the
        reference figures were computed with. Decoding, and turning other modes into RGB, is the
        caller's: the right conversion depends on where the image came from.
        """
        if image.mode != "RGB":
            raise ValueError(f"preprocessing needs an RGB image, not mode {image.mode}")
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), _resample(self.resize))
        hwc = np.asarray(image)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        # Read the HWC bytes through a transposed view and write the CHW result once, in place.
        out = np.empty((3, self.height, self.width), dtype=np.float32)
        np.subtract(hwc.transpose(2, 0, 1), mean, out=out)
        np.divide(out, std, out=out)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            resize=str(data.get("resize", "bilinear")),
        )


@dataclass(frozen=True)
class Parity:
    """How far an exported form is from eager on real images."""

    max_abs_diff: float
    top1_equal: bool
    images: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Parity:
        return cls(float(data["max_abs_diff"]), bool(data["top1_equal"]), int(data["images"]))


@dataclass(frozen=True)
class Manifest:
    model: str
    weights_source: str
    weights_sha256: str
    input_shape: tuple[int, int, int]
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    opset: int
    parity: dict[str, Parity]
    versions: dict[str, str]
    fingerprint: str
    # File name -> sha256, checked by the server at start-up.
    files: dict[str, str] = field(default_factory=dict)
    torchscript_optimized: bool = False
    manifest_version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        return cls(
            model=data["model"],
            weights_source=data["weights_source"],
            weights_sha256=data["weights_sha256"],
            input_shape=(
                int(data["input_shape"][0]),
                int(data["input_shape"][1]),
                int(data["input_shape"][2]),
            ),
            preprocessing=Preprocessing.from_json(data["preprocessing"]),
            labels=tuple(data["labels"]),
            opset=int(data["opset"]),
            parity={k: Parity.from_json(v) for k, v in data["parity"].items()},
            versions=dict(data["versions"]),
            fingerprint=data["fingerprint"],
            files=dict(data.get("files", {})),
            torchscript_optimized=bool(data.get("torchscript_optimized", False)),
            manifest_version=int(data.get("manifest_version", 0)),
        )


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json((folder / MANIFEST_NAME).read_text())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def modified_files(folder: Path, manifest: Manifest) -> list[str]:
    """The artifact files that are missing or differ from what the export wrote."""
    return [
        name
        for name, sha in manifest.files.items()
        if not (folder / name).is_file() or file_sha256(folder / name) != sha
    ]


def _resample(name: str) -> Image.Resampling:
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        raise ValueError(f"unknown resize filter {name!r}") from None


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
