"""Decode untrusted image bytes and turn them into the model's input tensor.

Admission comes before work: ``open_image`` reads only an image's header (format and size) and
refuses what the limits don't allow, so a request's images can all be checked, one by one and then
against the request's pixel budget (``check_request_pixels``), before any of them is decoded.
``decode_opened`` then does the expensive part: decode, apply the EXIF orientation, make RGB.

Decoding runs on a worker thread, one image per call (Pillow releases the GIL while it decodes),
never on the event loop. Every way an image can be bad becomes an ``ImageError`` naming its index,
so one broken image fails its request with INVALID_ARGUMENT and never the server. Bad metadata is
not a bad image: an unreadable EXIF block is ignored and the pixels are used as stored.

Two pieces of Pillow's process-wide state are deliberately left alone: ``Image.MAX_IMAGE_PIXELS``
(other code may share it) and the ``warnings`` filters, because ``warnings.catch_warnings`` swaps
them globally and is not thread-safe: two pool threads entering and leaving it out of order can
leave a filter installed for the whole process. Instead of catching Pillow's decompression-bomb
warning, ``_open`` identifies the image without the check that emits it and applies our own limit.
Pillow may still warn about a damaged EXIF block; what becomes of that is the process's choice.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import ExifTags, Image

from export.manifest import Preprocessing
from serve.errors import ImageError, ResourceExhausted

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_REQUEST_PIXELS",
    "ImageLimits",
    "check_request_pixels",
    "decode_image",
    "decode_opened",
    "load_image",
    "open_image",
]

DEFAULT_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
# 40 MP covers any camera photo; a decoded RGB image of that size is already 120 MB.
DEFAULT_MAX_PIXELS = 40_000_000
# Bounds the decoding one request can ask for: 2.5 images at the cap, or about eight 12 MP photos.
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000

# JPEG's factory returns an MPO image for multi-picture files; both decode through libjpeg.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
# Pillow reads 16 bytes to pick a plugin; a plugin's accept() sees only these.
_PREFIX_LENGTH = 16
# Pillow's own error text helps the caller, but it is not ours to send unbounded.
_DETAIL_LENGTH = 120
# EXIF orientation (how the stored pixels must be turned to stand upright) -> Pillow's transpose.
_UPRIGHT: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations that swap width and height.
_SIDEWAYS = frozenset({5, 6, 7, 8})
# Where Pillow keeps an orientation; dropped once applied, so nothing applies it twice.
_ORIENTATION_INFO = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")


@dataclass(frozen=True)
class ImageLimits:
    """What the server agrees to decode: pixel caps checked before decoding, and the formats."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_formats: frozenset[str] = DEFAULT_FORMATS
    # Decode big JPEGs at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), never below the target.
    draft: bool = True
    # The sum of width x height over one request's images (see check_request_pixels).
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    # Turn images upright by their EXIF Orientation tag, as photo viewers do.
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_request_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if self.max_request_pixels < self.max_pixels:
            raise ValueError(
                f"max_request_pixels ({self.max_request_pixels:,}) must be at least max_pixels "
                f"({self.max_pixels:,}), or a request of one allowed image could be refused"
            )
        if isinstance(self.allowed_formats, str):
            raise TypeError("allowed_formats must be a set of format names, not one string")
        formats = frozenset(name.upper() for name in self.allowed_formats)
        if not formats:
            raise ValueError("allowed_formats must name at least one format")
        unknown = formats - _openable_formats()
        if unknown:
            raise ValueError(f"Pillow can't open these formats: {', '.join(sorted(unknown))}")
        object.__setattr__(self, "allowed_formats", formats)


def open_image(data: bytes, index: int, limits: ImageLimits) -> Image.Image:
    """Identify ``data`` and parse its header, decoding nothing, or raise ``ImageError``.

    Refuses formats outside ``limits.allowed_formats`` and images over ``limits.max_pixels``.
    Cheap enough for admission; hand the result to ``decode_opened``.
    """
    if not data:
        raise ImageError(index, "is empty")
    image = _open(data, index, limits.allowed_formats)
    _check_size(image, index, limits.max_pixels)
    return image


def check_request_pixels(images: Sequence[Image.Image], budget: int) -> None:
    """Raise ``ResourceExhausted`` when the opened ``images`` add up to over ``budget`` pixels.

    The budget is normally ``ImageLimits.max_request_pixels``; sizes come from the headers, so call
    this after ``open_image`` and before decoding anything.
    """
    total = sum(image.width * image.height for image in images)
    if total > budget:
        raise ResourceExhausted(
            f"the request's images add up to {total:,} pixels, over the budget of {budget:,} "
            "pixels per request: split them over smaller requests"
        )


def decode_opened(
    image: Image.Image, index: int, limits: ImageLimits, target: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an ``open_image`` result into an upright, loaded RGB image (first frame only).

    ``target`` is the (width, height) the image will be resized to; with ``limits.draft`` a large
    JPEG is then decoded at a reduced scale that is still at least that size once upright.
    Raises ``ImageError`` for damaged pixel data; damaged EXIF is ignored.
    """
    upright = limits.exif_transpose
    try:
        if target is not None and limits.draft and image.format in _DRAFT_FORMATS:
            if upright and _orientation(image) in _SIDEWAYS:
                target = (target[1], target[0])
            image.draft("RGB", target)
        image.load()
    except MemoryError:
        raise ImageError(index, "is too large to decode (out of memory)") from None
    except Exception as exc:
        # Pillow's decoders report damage with a wide, undocumented range of exceptions.
        raise ImageError(index, f"is truncated or corrupt: {_detail(exc)}") from None
    rgb = _rgb_or_error(image, index)
    return _turn_upright(rgb, _orientation(image)) if upright else rgb


def decode_image(
    data: bytes, index: int, limits: ImageLimits, target: tuple[int, int] | None = None
) -> Image.Image:
    """``open_image`` then ``decode_opened``: bytes to an upright, loaded RGB image."""
    return decode_opened(open_image(data, index, limits), index, limits, target)


def load_image(
    data: bytes, index: int, limits: ImageLimits, pre: Preprocessing
) -> NDArray[np.float32]:
    """Bytes to model input for one image: the unit of work the thread pool runs."""
    image = decode_image(data, index, limits, target=(pre.width, pre.height))
    return pre.apply(image)


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


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when missing or unreadable: bad metadata never fails.

    Pillow parses the EXIF block once per image and caches it; without one this is a few lookups.
    """
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and value in _UPRIGHT else 1


def _turn_upright(image: Image.Image, orientation: int) -> Image.Image:
    method = _UPRIGHT.get(orientation)
    if method is None:
        return image
    upright = image.transpose(method)
    for key in _ORIENTATION_INFO:
        upright.info.pop(key, None)
    return upright


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _DETAIL_LENGTH else text[: _DETAIL_LENGTH - 1] + "…"
