"""Decode untrusted image bytes and turn them into the model's input tensor.

Everything here runs on a worker thread, one image per call (Pillow releases the GIL while it
decodes), never on the event loop. Every way an image can be bad becomes an ``ImageError`` naming
its index, so one broken image fails its request with INVALID_ARGUMENT and never the server.

Two pieces of Pillow's process-wide state are deliberately left alone: ``Image.MAX_IMAGE_PIXELS``
(other code may share it) and the ``warnings`` filters, because ``warnings.catch_warnings`` swaps
them globally and is not thread-safe: two pool threads entering and leaving it out of order can
leave a filter installed for the whole process. Instead of catching Pillow's decompression-bomb
warning, ``_open`` identifies the image without the check that emits it and applies our own limit.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from export.manifest import Preprocessing
from serve.errors import ImageError

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageLimits",
    "decode_image",
    "load_image",
    "preprocess",
]

DEFAULT_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
# 40 MP covers any camera photo; a decoded RGB image of that size is already 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000

# JPEG's factory returns an MPO image for multi-picture files; both decode through libjpeg.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# Pillow reads 16 bytes to pick a plugin; a plugin's accept() sees only these.
_PREFIX_LENGTH = 16
# Pillow's own error text helps the caller, but it is not ours to send unbounded.
_DETAIL_LENGTH = 120


@dataclass(frozen=True)
class ImageLimits:
    """What the server agrees to decode: a pixel cap checked before decoding, and the formats."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_formats: frozenset[str] = DEFAULT_FORMATS
    # Decode big JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), never below the target.
    draft: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int):
            raise TypeError(f"max_pixels must be an int, not {self.max_pixels!r}")
        if self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")
        if isinstance(self.allowed_formats, str):
            raise TypeError("allowed_formats must be a set of format names, not one string")
        formats = frozenset(name.upper() for name in self.allowed_formats)
        if not formats:
            raise ValueError("allowed_formats must name at least one format")
        unknown = formats - _openable_formats()
        if unknown:
            raise ValueError(f"Pillow can't open these formats: {', '.join(sorted(unknown))}")
        object.__setattr__(self, "allowed_formats", formats)


def decode_image(
    data: bytes, index: int, limits: ImageLimits, target: tuple[int, int] | None = None
) -> Image.Image:
    """Decode ``data`` into a loaded RGB image (first frame only), or raise ``ImageError``.

    ``target`` is the (width, height) the image will be resized to; with ``limits.draft`` a large
    JPEG is then decoded at a reduced scale that is still at least that size.
    """
    if not data:
        raise ImageError(index, "is empty")
    image = _open(data, index, limits.allowed_formats)
    _check_size(image, index, limits.max_pixels)
    try:
        if target is not None and limits.draft and image.format in _DRAFT_FORMATS:
            image.draft("RGB", target)
        image.load()
    except MemoryError:
        raise ImageError(index, "is too large to decode (out of memory)") from None
    except Exception as exc:
        # Pillow's decoders report damage with a wide, undocumented range of exceptions.
        raise ImageError(index, f"is truncated or corrupt: {_detail(exc)}") from None
    return _rgb_or_error(image, index)


def preprocess(image: Image.Image, pre: Preprocessing) -> NDArray[np.float32]:
    """Resize to ``pre``'s size, then return float32 CHW ``(rgb - mean) / std``.

    Bit-for-bit the same as ``Image.resize`` followed by float32 arithmetic, which is what the
    reference figures were computed with.
    """
    if 0.0 in pre.std:
        raise ValueError(f"preprocessing std must be non-zero, not {pre.std}")
    size = (pre.width, pre.height)
    rgb = _to_rgb(image)
    if rgb.size != size:
        rgb = rgb.resize(size, _resample(pre.resize))
    hwc = np.asarray(rgb)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(3, 1, 1)
    # Read the HWC bytes through a transposed view and write the CHW result once, in place.
    out = np.empty((3, pre.height, pre.width), dtype=np.float32)
    np.subtract(hwc.transpose(2, 0, 1), mean, out=out)
    np.divide(out, std, out=out)
    return out


def load_image(
    data: bytes, index: int, limits: ImageLimits, pre: Preprocessing
) -> NDArray[np.float32]:
    """Bytes to model input for one image: the unit of work the thread pool runs."""
    image = decode_image(data, index, limits, target=(pre.width, pre.height))
    return preprocess(image, pre)


def _openable_formats() -> frozenset[str]:
    # init() imports every plugin once; until then Image.OPEN holds only the common ones.
    Image.init()
    return frozenset(Image.OPEN)


def _open(data: bytes, index: int, allowed: frozenset[str]) -> Image.Image:
    """Identify the image and parse its header, trying only the allowed plugins.

    This is ``Image.open(fp, formats=...)`` without its decompression-bomb check, which would
    warn (globally, see the module docstring) before ``_check_size`` gets to refuse the image.
    """
    prefix = data[:_PREFIX_LENGTH]
    damaged: tuple[str, Exception] | None = None
    for name in (name for name in Image.ID if name in allowed):
        factory, accept = Image.OPEN[name]
        if accept is not None and not _accepts(accept, prefix):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # GIF and WebP plugins check sizes they find while parsing, against Pillow's limit.
            raise ImageError(index, f"is over the pixel limit: {_detail(exc)}") from None
        except Exception as exc:
            # Another plugin may share the magic bytes, so keep looking, as Image.open does.
            if accept is not None and damaged is None:
                damaged = (name, exc)
    if damaged is not None:
        name, error = damaged
        raise ImageError(index, f"looks like {name} but is truncated or corrupt: {_detail(error)}")
    raise ImageError(index, _unrecognised(data, allowed))


def _accepts(accept: Callable[[bytes], bool | str], prefix: bytes) -> bool:
    try:
        result = accept(prefix)
    except Exception:
        return False
    # A string is Pillow explaining that the plugin's library is missing: not a match.
    return not isinstance(result, str) and bool(result)


def _unrecognised(data: bytes, allowed: frozenset[str]) -> str:
    # Only the magic bytes are checked: a refused format's parser never sees the data.
    prefix = data[:_PREFIX_LENGTH]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if name not in allowed and accept is not None and _accepts(accept, prefix):
            return f"format {name} is not allowed (allowed: {', '.join(sorted(allowed))})"
    return f"is not a recognised image ({len(data)} bytes)"


def _check_size(image: Image.Image, index: int, max_pixels: int) -> None:
    # Only the header has been read: refuse here, before load() allocates width x height.
    width, height = image.size
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            index,
            f"is {width}x{height} = {pixels:,} pixels, over the limit of {max_pixels:,} pixels",
        )


def _rgb_or_error(image: Image.Image, index: int) -> Image.Image:
    try:
        return _to_rgb(image)
    except MemoryError:
        raise ImageError(index, "is too large to decode (out of memory)") from None
    except Exception as exc:
        raise ImageError(index, f"has mode {image.mode}, which can't be made RGB: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """``convert("RGB")`` (alpha dropped, as in the reference), except where it would mislead."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _wide_to_l(image)
    elif image.mode == "P" and "transparency" in image.info:
        # Going straight to RGB warns about byte-string transparency; via RGBA it can't.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _wide_to_l(image: Image.Image) -> Image.Image:
    """Scale wide greyscale to 8 bits; ``convert`` would clip everything above 255 to white.

    Integer modes are taken as 16-bit samples (Pillow's container for 16-bit PNG and TIFF data),
    float as 0.0-1.0. A fixed scale keeps a dark image dark, which stretching by its maximum would
    not.
    """
    samples = np.asarray(image)
    if image.mode == "F":
        # NaN would make the cast to uint8 warn; treat it as black.
        eight = np.rint(np.clip(np.nan_to_num(samples, nan=0.0), 0.0, 1.0) * 255.0)
    else:
        eight = np.clip(samples, 0, 0xFFFF) >> 8
    return Image.fromarray(eight.astype(np.uint8))


def _resample(name: str) -> Image.Resampling:
    try:
        return Image.Resampling[name.upper()]
    except KeyError:
        raise ValueError(f"unknown resize filter {name!r}") from None


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _DETAIL_LENGTH else text[: _DETAIL_LENGTH - 1] + "…"
