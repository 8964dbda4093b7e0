"""The manifest and the image pre-processing: what the export stage and the server share.

``artifacts/<model>/manifest.json`` says what was exported, from which weights, how images must be
pre-processed, what the classes are called, and how well the exported forms agree with eager.
``Preprocessing`` is the one definition of image pre-processing: ``apply`` is its executable form
(used by the export stage on its sample photos and by the server on every request), and
``to_parameters`` / ``from_parameters`` its spelling in config.pbtxt's ``parameters``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = [
    "CHANNEL_ORDERS",
    "CONFIG_NAME",
    "EXPORTED_VERSION",
    "IMAGE_INPUT_PARAMETER",
    "LABELS_NAME",
    "LAYOUTS",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "ONNX_NAME",
    "TORCHSCRIPT_NAME",
    "TORCH_EXPORT_NAME",
    "WEIGHTS_NAME",
    "Manifest",
    "Parity",
    "Preprocessing",
    "PreprocessingError",
    "file_sha256",
    "modified_files",
    "parse_number",
    "parse_triple",
    "read_manifest",
]

# A model folder, in Triton's layout: these beside the numbered version folders.
MANIFEST_NAME = "manifest.json"
CONFIG_NAME = "config.pbtxt"
LABELS_NAME = "labels.txt"
# The model files in a version folder, one per format.
ONNX_NAME = "model.onnx"
TORCHSCRIPT_NAME = "model.pt"
TORCH_EXPORT_NAME = "model.pt2"
WEIGHTS_NAME = "weights.pt"
# The version folder the export stage writes the built-in models into.
EXPORTED_VERSION = "1"
# Bumped whenever the layout of the artifacts changes, so the server refuses stale folders.
MANIFEST_VERSION = 3


def parse_number(text: str) -> float:
    """A number as config.pbtxt or a command line spells it: ``0.5``, ``1e-3`` or ``1/255``."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not a number") from None


def parse_triple(text: str) -> tuple[float, float, float]:
    """Three numbers separated by commas (``parse_number``'s spellings): a mean or a std."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"{text!r} is not three comma-separated numbers")
    a, b, c = (parse_number(part) for part in parts)
    return (a, b, c)


CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
# The config.pbtxt parameter naming the input fed from encoded images; the config writer sets it.
IMAGE_INPUT_PARAMETER = "image_input"
# Preprocessing field -> its config.pbtxt parameter (a string value), how to read that string,
# and what a bad one should have been.
_PARAMETERS: dict[str, tuple[str, Callable[[str], object], str]] = {
    "resize": ("image_resize", str, "a filter name"),
    "resize_shorter": ("image_resize_shorter", int, "a whole number"),
    "scale": ("image_scale", parse_number, "a number"),
    "mean": ("image_mean", parse_triple, "three comma-separated numbers"),
    "std": ("image_std", parse_triple, "three comma-separated numbers"),
    "channel_order": ("image_channel_order", str, "a channel order"),
    "layout": ("image_layout", str, "a layout"),
}
# Written even when they hold the default, so a config.pbtxt shows how its images are fed.
_ALWAYS_WRITTEN = ("resize", "mean", "std")


class PreprocessingError(ValueError):
    """A pre-processing field with a bad value; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Preprocessing:
    """Resize, then ``(pixel * scale - mean) / std``, in the model's channel order and layout.

    - ``resize`` names the filter (a ``PIL.Image.Resampling`` member; bilinear unless told).
    - ``resize_shorter`` 0 resizes straight to ``height`` x ``width``. N > 0 resizes the shorter
      side to N keeping the aspect ratio, then crops ``height`` x ``width`` from the centre
      (torchvision's ``Resize(N)`` then ``CenterCrop``). N must be at least ``max(height,
      width)``: a square image becomes N x N, and the crop must fit in it.
    - ``scale`` multiplies the 0-255 pixel values first (1/255 gives 0-1); ``mean`` and ``std``
      apply after it, in the model's channel order.
    - ``channel_order`` RGB or BGR; ``layout`` NCHW (the model takes 3 x H x W) or NHWC.

    The fields are checked on construction, so a bad manifest or config fails when it is read,
    not on the first request.
    """

    height: int
    width: int
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "bilinear"
    resize_shorter: int = 0
    scale: float = 1.0
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise PreprocessingError(
                "height", f"preprocessing size must be positive, not {self.width}x{self.height}"
            )
        # Normalised here, so equal settings compare equal however they were spelled.
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        object.__setattr__(self, "resize", self.resize.lower())
        object.__setattr__(self, "resize_shorter", int(self.resize_shorter))
        object.__setattr__(self, "scale", float(self.scale))
        if 0.0 in self.std:
            raise PreprocessingError("std", f"preprocessing std must be non-zero, not {self.std}")
        _resample(self.resize)
        self._check_resize_shorter()
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise PreprocessingError(
                "scale", f"preprocessing scale must be a positive number, not {self.scale}"
            )
        _one_of("channel_order", self.channel_order, CHANNEL_ORDERS)
        _one_of("layout", self.layout, LAYOUTS)

    def _check_resize_shorter(self) -> None:
        shorter = self.resize_shorter
        if shorter < 0:
            raise PreprocessingError(
                "resize_shorter", f"resize_shorter must be 0 or positive, not {shorter}"
            )
        larger = max(self.height, self.width)
        if 0 < shorter < larger:
            raise PreprocessingError(
                "resize_shorter",
                f"resize_shorter {shorter} must be at least the crop's larger side, {larger} "
                f"(a square image becomes {shorter}x{shorter})",
            )

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """The shape of ``apply``'s result: (3, height, width), or (height, width, 3) for NHWC."""
        if self.layout == "NHWC":
            return (self.height, self.width, 3)
        return (3, self.height, self.width)

    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) a decoder may shrink an image to, and no smaller, without changing
        what ``apply`` sees beyond rounding (JPEG draft decoding aims at it)."""
        if self.resize_shorter:
            return (self.resize_shorter, self.resize_shorter)
        return (self.width, self.height)

    def apply(self, image: Image.Image) -> NDArray[np.float32]:
        """Resize (and crop) an RGB image, and return float32 ``(pixel * scale - mean) / std`` in
        ``output_shape``.

        With the default scale, order and layout, bit-for-bit the same as ``Image.resize``
        followed by float32 arithmetic, which is what the reference figures were computed with.
        Decoding, and turning other modes into RGB, is the caller's: the right conversion depends
        on where the image came from.
        """
        if image.mode != "RGB":
            raise ValueError(f"preprocessing needs an RGB image, not mode {image.mode}")
        hwc = self._resized(image)
        if self.channel_order == "BGR":
            hwc = hwc[..., ::-1]
        # NCHW reads the HWC bytes through a transposed view and writes the CHW result once.
        planar = self.layout == "NCHW"
        pixels = hwc.transpose(2, 0, 1) if planar else hwc
        per_channel = (3, 1, 1) if planar else (3,)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(per_channel)
        std = np.asarray(self.std, dtype=np.float32).reshape(per_channel)
        out = np.empty(self.output_shape, dtype=np.float32)
        if self.scale == 1.0:
            np.subtract(pixels, mean, out=out)
        else:
            np.multiply(pixels, np.float32(self.scale), out=out)
            np.subtract(out, mean, out=out)
        np.divide(out, std, out=out)
        return out

    def _resized(self, image: Image.Image) -> NDArray[np.uint8]:
        """The HWC pixels at ``height`` x ``width``: resized, and centre-cropped when asked."""
        size = self._resize_to(image.size)
        if image.size != size:
            image = image.resize(size, _resample(self.resize))
        hwc: NDArray[np.uint8] = np.asarray(image)
        if size == (self.width, self.height):
            return hwc
        # torchvision's CenterCrop rounds the offsets the same way.
        top = round((size[1] - self.height) / 2)
        left = round((size[0] - self.width) / 2)
        return hwc[top : top + self.height, left : left + self.width]

    def _resize_to(self, size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) to resize an image of ``size`` to, as torchvision's ``Resize``."""
        shorter = self.resize_shorter
        if not shorter:
            return (self.width, self.height)
        width, height = size
        if width <= height:
            return (shorter, int(shorter * height / width))
        return (int(shorter * width / height), shorter)

    def to_parameters(self) -> dict[str, str]:
        """The ``image_*`` config.pbtxt parameters: those that differ from the defaults, and
        always ``image_resize``, ``image_mean`` and ``image_std`` (``image_input`` is the config
        writer's)."""
        defaults = Preprocessing(self.height, self.width)
        return {
            key: _parameter_text(getattr(self, name))
            for name, (key, _, _) in _PARAMETERS.items()
            if name in _ALWAYS_WRITTEN or getattr(self, name) != getattr(defaults, name)
        }

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, str], height: int, width: int
    ) -> Preprocessing:
        """The pre-processing config.pbtxt's ``parameters`` describe for an image input of
        ``height`` x ``width``; absent keys keep their defaults, keys not about images are
        ignored. Raises ValueError naming the key of a bad value, or an unknown ``image_*`` key.
        """
        known = {key for key, _, _ in _PARAMETERS.values()} | {IMAGE_INPUT_PARAMETER}
        unknown = sorted(key for key in parameters if key.startswith("image_") and key not in known)
        if unknown:
            raise ValueError(
                f"unknown parameter {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        values: dict[str, Any] = {}
        for name, (key, parse, expected) in _PARAMETERS.items():
            if key in parameters:
                try:
                    values[name] = parse(parameters[key])
                except ValueError:
                    raise ValueError(
                        f"parameter {key}: {parameters[key]!r} is not {expected}"
                    ) from None
        try:
            return cls(height, width, **values)
        except PreprocessingError as error:
            if error.field not in _PARAMETERS:
                raise
            raise ValueError(f"parameter {_PARAMETERS[error.field][0]}: {error}") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            height=int(data["height"]),
            width=int(data["width"]),
            mean=_triple("mean", data["mean"]),
            std=_triple("std", data["std"]),
            resize=str(data.get("resize", "bilinear")),
            resize_shorter=int(data.get("resize_shorter", 0)),
            scale=float(data.get("scale", 1.0)),
            channel_order=str(data.get("channel_order", "RGB")),
            layout=str(data.get("layout", "NCHW")),
        )


def _parameter_text(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(_parameter_text(v) for v in value)
    if isinstance(value, float):
        # repr round-trips exactly; 127.0 reads better as 127.
        return repr(value).removesuffix(".0")
    return str(value)


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
    # Path relative to the model folder ("1/model.onnx") -> sha256, checked by the server.
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
    """The files (paths relative to ``folder``) that are missing or differ from what the export
    wrote."""
    return [
        path
        for path, sha in manifest.files.items()
        if not (folder / path).is_file() or file_sha256(folder / path) != sha
    ]


def _resample(name: str) -> Image.Resampling:
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        raise PreprocessingError("resize", f"unknown resize filter {name!r}") from None


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PreprocessingError(name, f"{name} must be {' or '.join(allowed)}, not {value!r}")


def _triple(name: str, values: Any) -> tuple[float, float, float]:
    numbers = tuple(float(v) for v in values)
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise PreprocessingError(name, f"preprocessing {name} must be three numbers, not {values}")
    a, b, c = numbers
    return (a, b, c)
