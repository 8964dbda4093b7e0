"""serve.imaging: every bad image becomes an ImageError; good ones match the reference exactly.

Also ``Preprocessing.apply`` (export.manifest), the pixel arithmetic the server shares with export.
"""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import ExifTags, Image, ImageFile, ImageOps
from torchvision.transforms.functional import center_crop, resize

from export.manifest import Preprocessing
from serve.errors import ImageError, ResourceExhausted
from serve.imaging import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ImageLimits,
    check_request_pixels,
    decode_image,
    decode_opened,
    load_image,
    open_image,
)

IMAGES = Path(__file__).resolve().parent / "images"
# The default model's pre-processing, as in the reference figures.
LITE0 = Preprocessing(224, 224, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
# Different per channel, so a swapped channel or a missed mean shows.
SKEWED = Preprocessing(4, 4, (120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
LIMITS = ImageLimits()
BOMB_SIDE = 50_000
PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def reference(path: Path, pre: Preprocessing) -> NDArray[np.float32]:
    """The pre-processing the expected figures were computed with, written the obvious way.

    ``Image.Resampling.BILINEAR`` equals ``Image.BILINEAR`` (2); this spelling is the one mypy
    knows.
    """
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((pre.width, pre.height), Image.Resampling.BILINEAR)
    rgb = np.asarray(resized, dtype=np.float32)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    return ((rgb - mean) / std).transpose(2, 0, 1)


def big_jpeg() -> bytes:
    with Image.open(IMAGES / "coffee.jpg") as image:
        big = image.convert("RGB").resize((1600, 1067), Image.Resampling.BICUBIC)
    return encode(big, "JPEG", quality=90)


def refused(data: bytes, index: int = 7, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageError) as caught:
        decode_image(data, index, limits)
    assert caught.value.index == index
    assert str(caught.value).startswith(f"image {index}: ")
    return caught.value.reason


# --- bad input -------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert refused(b"") == "is empty"


@pytest.mark.parametrize("data", [b"hello, this is not an image", b"\x00" * 64, b"x"])
def test_not_an_image(data: bytes) -> None:
    assert refused(data) == f"is not a recognised image ({len(data)} bytes)"


def test_disallowed_format_is_named() -> None:
    limits = ImageLimits(allowed_formats=DEFAULT_FORMATS - {"WEBP"})
    webp = encode(Image.new("RGB", (8, 8)), "WEBP")
    assert refused(webp, limits=limits) == (
        "format WEBP is not allowed (allowed: BMP, GIF, JPEG, PNG)"
    )


def test_format_outside_the_defaults_is_refused() -> None:
    tiff = encode(Image.new("RGB", (8, 8)), "TIFF")
    assert refused(tiff).startswith("format TIFF is not allowed")


def test_allowed_formats_can_be_narrowed() -> None:
    cat = (IMAGES / "cat.jpg").read_bytes()
    assert "format JPEG is not allowed" in refused(
        cat, limits=ImageLimits(allowed_formats=frozenset({"PNG"}))
    )


@pytest.mark.parametrize("name", ["cat.jpg", "cat.png"])
def test_truncated_image(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    assert "truncated or corrupt" in refused(data[: len(data) // 2])
    # Refusing must come from the code, not from process-wide Pillow settings it changed.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == PILLOW_MAX_PIXELS


@pytest.mark.parametrize("name", ["cat.jpg", "cat.png"])
def test_truncated_header(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    reason = refused(data[:24])
    assert reason.startswith(f"looks like {name[-3:].upper().replace('JPG', 'JPEG')} but")
    assert "truncated or corrupt" in reason


def test_corrupt_scan_data() -> None:
    data = bytearray((IMAGES / "cat.png").read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 200] = bytes(200)
    assert "truncated or corrupt" in refused(bytes(data))


# --- decompression bombs ---------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "PNG"))
    # IHDR is the first chunk: length at 8, type at 12, width and height at 16, CRC at 29.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    return bytes(data)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


@pytest.mark.parametrize("craft", [png_claiming, jpeg_claiming, gif_claiming, bmp_claiming])
def test_bomb_is_refused_from_its_header(craft: Callable[[int, int], bytes]) -> None:
    data = craft(BOMB_SIDE, BOMB_SIDE)
    assert len(data) < 2000
    started = time.perf_counter()
    reason = refused(data)
    # Decoding 50000 x 50000 RGB would need 7.5 GB: only a header check is this fast.
    assert time.perf_counter() - started < 1.0
    assert reason == (
        f"is 50000x50000 = 2,500,000,000 pixels, over the limit of {DEFAULT_MAX_PIXELS:,} pixels"
    )


def test_bomb_below_pillows_limit_is_refused_without_a_warning() -> None:
    # 100 MP is over Pillow's MAX_IMAGE_PIXELS, where Image.open would warn before we could refuse.
    data = png_claiming(10_000, 10_000)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        reason = refused(data)
    assert seen == []
    assert "100,000,000 pixels" in reason


def test_custom_pixel_limit() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    assert "5,000 pixels, over the limit of 4,999" in refused(data, limits=ImageLimits(4_999))
    assert decode_image(data, 0, ImageLimits(5_000)).size == (100, 50)


def test_pillows_own_bomb_error_becomes_image_error() -> None:
    # A GIF frame far outside its 8x8 screen: Pillow's GIF parser itself raises while parsing.
    data = bytearray(encode(Image.new("P", (8, 8)), "GIF"))
    descriptor = data.index(b",")
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 60_000, 60_000)
    reason = refused(bytes(data))
    assert reason.startswith("is over the pixel limit")
    assert "3600000000 pixels" in reason


def test_image_without_pixels() -> None:
    assert "truncated or corrupt" in refused(png_claiming(0, 8))


# --- modes -----------------------------------------------------------------------------------


def palette_image(transparency: bool) -> bytes:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    if transparency:
        # Per-entry alpha as bytes: convert("RGB") on this warns, which the pipeline avoids.
        return encode(image, "PNG", transparency=bytes([255, 0]))
    return encode(image, "PNG")


def animated_gif() -> bytes:
    first, second = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    return encode(first, "GIF", save_all=True, append_images=[second], transparency=0)


TIFF = ImageLimits(allowed_formats=DEFAULT_FORMATS | {"TIFF"})

# (case, encoded image, limits, expected RGB at every pixel, tolerance in 0-255 levels)
MODES: list[tuple[str, Callable[[], bytes], ImageLimits, tuple[int, int, int], int]] = [
    ("RGB", lambda: encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG"), LIMITS, (1, 2, 3), 0),
    ("1", lambda: encode(Image.new("1", (8, 8), 1), "PNG"), LIMITS, (255, 255, 255), 0),
    ("L", lambda: encode(Image.new("L", (8, 8), 100), "PNG"), LIMITS, (100, 100, 100), 0),
    ("LA", lambda: encode(Image.new("LA", (8, 8), (100, 0)), "PNG"), LIMITS, (100,) * 3, 0),
    ("RGBA", lambda: encode(Image.new("RGBA", (8, 8), (9, 8, 7, 0)), "PNG"), LIMITS, (9, 8, 7), 0),
    ("P", lambda: palette_image(False), LIMITS, (10, 20, 30), 0),
    ("P+transparency", lambda: palette_image(True), LIMITS, (10, 20, 30), 0),
    ("GIF first frame", animated_gif, LIMITS, (255, 0, 0), 0),
    # 51200 / 256 = 200: a 16-bit sample keeps its brightness instead of clipping to white.
    ("I;16", lambda: encode(Image.new("I;16", (8, 8), 51200), "PNG"), LIMITS, (200,) * 3, 0),
    ("I", lambda: encode(Image.new("I", (8, 8), 51200), "TIFF"), TIFF, (200,) * 3, 0),
    ("F", lambda: encode(Image.new("F", (8, 8), 0.25), "TIFF"), TIFF, (64,) * 3, 0),
    (
        "CMYK",
        lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"),
        LIMITS,
        (255, 0, 0),
        2,
    ),
    ("BMP", lambda: encode(Image.new("RGB", (8, 8), (4, 5, 6)), "BMP"), LIMITS, (4, 5, 6), 0),
    (
        "WEBP",
        lambda: encode(Image.new("RGB", (8, 8), (4, 5, 6)), "WEBP", lossless=True),
        LIMITS,
        (4, 5, 6),
        0,
    ),
]


@pytest.mark.parametrize(
    ("data", "limits", "rgb", "tolerance"),
    [pytest.param(make, limits, rgb, tol, id=case) for case, make, limits, rgb, tol in MODES],
)
def test_every_mode_becomes_normalised_rgb(
    data: Callable[[], bytes], limits: ImageLimits, rgb: tuple[int, int, int], tolerance: int
) -> None:
    encoded = data()
    decoded = decode_image(encoded, 0, limits)
    assert decoded.mode == "RGB"
    tensor = load_image(encoded, 0, limits, SKEWED)
    assert tensor.shape == (3, 4, 4)
    assert tensor.dtype == np.float32
    assert tensor.flags.c_contiguous
    expected = (np.array(rgb, np.float32) - np.array(SKEWED.mean, np.float32)) / np.array(
        SKEWED.std, np.float32
    )
    atol = tolerance / min(SKEWED.std) + 1e-6
    np.testing.assert_allclose(tensor[:, 0, 0], expected, rtol=0, atol=atol)
    np.testing.assert_allclose(
        tensor, np.broadcast_to(expected[:, None, None], tensor.shape), atol=atol
    )


def test_dark_16_bit_image_stays_dark() -> None:
    # Stretching by the maximum would turn this near-black image mid-grey.
    data = encode(Image.new("I;16", (4, 4), 300), "PNG")
    assert decode_image(data, 0, LIMITS).getpixel((0, 0)) == (1, 1, 1)


def test_float_nan_is_black_without_a_warning() -> None:
    image = Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32))
    data = encode(image, "TIFF")
    assert decode_image(data, 0, TIFF).getpixel((0, 0)) == (0, 0, 0)


# --- agreement with the reference ------------------------------------------------------------


@pytest.mark.parametrize("name", ["cat.jpg", "cat.png", "coffee.jpg"])
def test_matches_reference_exactly(name: str) -> None:
    data = (IMAGES / name).read_bytes()
    expected = reference(IMAGES / name, LITE0)
    without_draft = LITE0.apply(decode_image(data, 0, ImageLimits(draft=False)))
    assert np.array_equal(without_draft, expected)
    # These photos are under twice the target size, so draft mode must not touch them.
    assert np.array_equal(load_image(data, 0, LIMITS, LITE0), expected)


def test_preprocess_matches_reference_for_uneven_mean_and_std() -> None:
    pre = Preprocessing(224, 224, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    with Image.open(IMAGES / "cat.jpg") as image:
        rgb = image.convert("RGB")
    assert np.array_equal(pre.apply(rgb), reference(IMAGES / "cat.jpg", pre))


def test_preprocess_at_target_size_skips_resize() -> None:
    image = Image.new("RGB", (4, 4), (120, 110, 100))
    assert np.array_equal(SKEWED.apply(image), np.zeros((3, 4, 4), np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resize": "sideways"}, "unknown resize filter 'sideways'"),
        ({"std": (1.0, 0.0, 1.0)}, "non-zero"),
        ({"height": 0}, "positive"),
        ({"width": -4}, "positive"),
        ({"mean": (1.0, 2.0)}, "mean must be three numbers"),
        ({"std": (1.0, float("nan"), 1.0)}, "std must be three numbers"),
        ({"resize_shorter": -1}, "0 or positive"),
        ({"resize_shorter": 3}, "resize_shorter 3 must be at least the crop's larger side, 4 "),
        ({"width": 6, "resize_shorter": 5}, "at least the crop's larger side, 6 "),
        ({"scale": 0.0}, "scale must be a positive number"),
        ({"scale": float("inf")}, "scale must be a positive number"),
        ({"channel_order": "rgb"}, "channel_order must be RGB or BGR, not 'rgb'"),
        ({"layout": "CHW"}, "layout must be NCHW or NHWC, not 'CHW'"),
    ],
)
def test_preprocessing_is_checked_when_constructed(kwargs: dict[str, object], match: str) -> None:
    fields: dict[str, object] = {
        "height": 4,
        "width": 4,
        "mean": (0.0,) * 3,
        "std": (1.0,) * 3,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        Preprocessing(**fields)  # type: ignore[arg-type]


def test_preprocessing_needs_rgb() -> None:
    # Converting other modes is the decoder's job (see _to_rgb), never silently redone here.
    with pytest.raises(ValueError, match="needs an RGB image, not mode L"):
        SKEWED.apply(Image.new("L", (4, 4)))


def random_image(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
@pytest.mark.parametrize("scale", [1.0, 1 / 255])
def test_preprocess_scale_channel_order_and_layout(
    scale: float, channel_order: str, layout: str
) -> None:
    pre = Preprocessing(
        5, 7, SKEWED.mean, SKEWED.std, scale=scale, channel_order=channel_order, layout=layout
    )
    image = random_image(7, 5)
    hwc = np.asarray(image, dtype=np.float32)
    if channel_order == "BGR":
        hwc = hwc[..., ::-1]
    mean, std = np.float32(SKEWED.mean), np.float32(SKEWED.std)
    expected = (hwc * np.float32(scale) - mean) / std
    if layout == "NCHW":
        expected = expected.transpose(2, 0, 1)
    out = pre.apply(image)
    assert out.shape == pre.output_shape == ((5, 7, 3) if layout == "NHWC" else (3, 5, 7))
    assert out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    ("name", "height", "width", "shorter"),
    [("cat.jpg", 224, 224, 256), ("coffee.jpg", 200, 240, 256), ("cat.jpg", 224, 224, 224)],
)
def test_resize_shorter_then_crop_is_torchvisions(
    name: str, height: int, width: int, shorter: int
) -> None:
    """Resize(shorter) then CenterCrop((height, width)), as torchvision does it on PIL images."""
    pre = Preprocessing(height, width, SKEWED.mean, SKEWED.std, resize_shorter=shorter)
    with Image.open(IMAGES / name) as image:
        rgb = image.convert("RGB")
    cropped = center_crop(resize(rgb, [shorter]), [height, width])
    hwc = np.asarray(cropped, dtype=np.float32)
    expected = ((hwc - np.float32(SKEWED.mean)) / np.float32(SKEWED.std)).transpose(2, 0, 1)
    assert np.array_equal(pre.apply(rgb), expected)


@pytest.mark.parametrize(("size", "resized"), [((300, 600), (256, 512)), ((500, 400), (320, 256))])
def test_resize_shorter_keeps_the_aspect_ratio(
    size: tuple[int, int], resized: tuple[int, int]
) -> None:
    """A gradient shows where the crop came from: the middle of the resized image."""
    width, height = size
    ramp = np.broadcast_to(np.arange(width, dtype=np.float32) * 255 / (width - 1), (height, width))
    image = Image.fromarray(np.stack([ramp] * 3, axis=-1).astype(np.uint8), "RGB")
    pre = Preprocessing(256, 256, resize_shorter=256)
    out = pre.apply(image)[0]
    expected = np.asarray(image.resize(resized, Image.Resampling.BILINEAR), dtype=np.float32)[
        ..., 0
    ]
    top, left = (resized[1] - 256) // 2, (resized[0] - 256) // 2
    assert np.array_equal(out, expected[top : top + 256, left : left + 256])


def test_draft_size_keeps_what_the_preprocessing_reads() -> None:
    assert LITE0.draft_size == (224, 224)
    assert Preprocessing(200, 240).draft_size == (240, 200)
    assert Preprocessing(224, 224, resize_shorter=256).draft_size == (256, 256)


def test_default_parameters_are_the_three_always_written() -> None:
    assert LITE0.to_parameters() == {
        "image_resize": "bilinear",
        "image_mean": "127,127,127",
        "image_std": "128,128,128",
    }
    assert Preprocessing.from_parameters(LITE0.to_parameters(), 224, 224) == LITE0
    assert Preprocessing.from_parameters({}, 4, 4) == Preprocessing(4, 4, (0, 0, 0), (1, 1, 1))


def test_every_setting_round_trips_through_parameters() -> None:
    pre = Preprocessing(
        32,
        48,
        (0.485 * 255, 0.456 * 255, 0.406 * 255),
        (0.229, 0.224, 0.225),
        resize="BICUBIC",
        resize_shorter=64,
        scale=1 / 255,
        channel_order="BGR",
        layout="NHWC",
    )
    parameters = pre.to_parameters()
    assert parameters == {
        "image_resize": "bicubic",
        "image_resize_shorter": "64",
        "image_scale": "0.00392156862745098",
        "image_mean": "123.675,116.28,103.53",
        "image_std": "0.229,0.224,0.225",
        "image_channel_order": "BGR",
        "image_layout": "NHWC",
    }
    # Keys that are not about pre-processing belong to others, and are left alone.
    others = {"image_input": "input", "softmax": "logits", "factory": "a.b:c"}
    assert Preprocessing.from_parameters({**parameters, **others}, 32, 48) == pre


def test_parameters_may_spell_the_scale_as_a_fraction() -> None:
    pre = Preprocessing.from_parameters(
        {"image_scale": "1/255", "image_mean": "0.5, 1/2, 5e-1"}, 4, 4
    )
    assert pre.scale == 1 / 255
    assert pre.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("image_mean", "1,2", "parameter image_mean: '1,2' is not three comma-separated numbers"),
        ("image_std", "1,0,1", "parameter image_std: preprocessing std must be non-zero"),
        ("image_std", "1,x,1", "parameter image_std: '1,x,1' is not three comma-separated"),
        ("image_scale", "much", "parameter image_scale: 'much' is not a number"),
        ("image_scale", "1/0", "parameter image_scale: '1/0' is not a number"),
        ("image_scale", "-1", "parameter image_scale: .* must be a positive number"),
        ("image_resize_shorter", "2.5", "parameter image_resize_shorter: '2.5' is not a whole"),
        ("image_resize_shorter", "2", "parameter image_resize_shorter: .* larger side, 4"),
        ("image_resize", "sideways", "parameter image_resize: unknown resize filter 'sideways'"),
        ("image_channel_order", "GRB", "parameter image_channel_order: .* not 'GRB'"),
        ("image_layout", "CHW", "parameter image_layout: .* not 'CHW'"),
        ("image_means", "1,2,3", "unknown parameter 'image_means'"),
    ],
)
def test_bad_parameters_are_named(key: str, value: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Preprocessing.from_parameters({key: value}, 4, 4)


def test_draft_decodes_large_jpeg_smaller_but_not_below_target() -> None:
    data = big_jpeg()
    full = decode_image(data, 0, ImageLimits(draft=False), target=(224, 224))
    drafted = decode_image(data, 0, LIMITS, target=(224, 224))
    assert full.size == (1600, 1067)
    assert drafted.size == (400, 267)
    assert drafted.mode == "RGB"
    # Without a target there is nothing to aim for, so the image is decoded in full.
    assert decode_image(data, 0, LIMITS).size == (1600, 1067)


def test_draft_changes_the_tensor_only_slightly() -> None:
    data = big_jpeg()
    drafted = load_image(data, 0, LIMITS, LITE0)
    full = load_image(data, 0, ImageLimits(draft=False), LITE0)
    difference = np.abs(drafted - full)
    assert float(difference.mean()) < 0.02
    assert float(difference.max()) < 0.5


def test_draft_is_jpeg_only() -> None:
    data = encode(Image.new("RGB", (1600, 1000)), "PNG")
    assert decode_image(data, 0, LIMITS, target=(224, 224)).size == (1600, 1000)


def test_concurrent_decoding_matches_serial() -> None:
    good = [(IMAGES / name).read_bytes() for name in ("cat.jpg", "cat.png", "coffee.jpg")]
    batch = [*good, b"", png_claiming(BOMB_SIDE, BOMB_SIDE), good[0][:5000]] * 4

    def work(item: tuple[int, bytes]) -> NDArray[np.float32] | str:
        try:
            return load_image(item[1], item[0], LIMITS, LITE0)
        except ImageError as error:
            return error.message

    serial = [work(item) for item in enumerate(batch)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(work, enumerate(batch)))
    for one, other in zip(serial, parallel, strict=True):
        if isinstance(one, str):
            assert one == other
        else:
            assert isinstance(other, np.ndarray)
            assert np.array_equal(one, other)
    assert serial[3] == "image 3: is empty"


# --- admission: open the header, check the request, decode later ----------------------------


def test_open_image_reads_the_header_only() -> None:
    data = (IMAGES / "cat.png").read_bytes()
    # Half the pixel data is missing, which only decoding can notice.
    opened = open_image(data[: len(data) // 2], 3, LIMITS)
    assert (opened.format, opened.size) == ("PNG", (451, 300))
    with pytest.raises(ImageError, match=r"^image 3: is truncated or corrupt"):
        decode_opened(opened, 3, LIMITS)


def test_open_then_decode_is_decode_image() -> None:
    data = (IMAGES / "cat.jpg").read_bytes()
    opened = open_image(data, 0, LIMITS)
    decoded = decode_opened(opened, 0, LIMITS, target=(224, 224))
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(decode_image(data, 0, LIMITS)))


def test_open_image_refuses_a_huge_header_at_once() -> None:
    data = png_claiming(100_000, 100_000)
    started = time.perf_counter()
    with pytest.raises(ImageError) as caught:
        open_image(data, 2, LIMITS)
    # Decoding would need 30 GB; a header check takes well under a millisecond.
    assert time.perf_counter() - started < 0.25
    assert caught.value.message == (
        "image 2: is 100000x100000 = 10,000,000,000 pixels, over the limit of 40,000,000 pixels"
    )


def test_open_image_refuses_a_disallowed_format_by_its_magic_bytes() -> None:
    # A WebP signature over garbage: had the WebP parser run, it would report damage instead.
    data = b"RIFF\x00\x01\x00\x00WEBPVP8 " + bytes(range(256)) * 4
    limits = ImageLimits(allowed_formats=frozenset({"PNG", "JPEG"}))
    with pytest.raises(ImageError) as caught:
        open_image(data, 1, limits)
    assert caught.value.reason == "format WEBP is not allowed (allowed: JPEG, PNG)"


def test_open_image_refuses_empty_bytes() -> None:
    with pytest.raises(ImageError, match=r"^image 4: is empty$"):
        open_image(b"", 4, LIMITS)


def opened_sizes(*sizes: tuple[int, int]) -> list[Image.Image]:
    return [
        open_image(encode(Image.new("RGB", size), "PNG"), i, LIMITS) for i, size in enumerate(sizes)
    ]


def test_request_pixels_up_to_the_budget_pass() -> None:
    images = opened_sizes((100, 50), (30, 20), (1, 1))  # 5,000 + 600 + 1
    check_request_pixels(images, 5_601)
    check_request_pixels([], 1)


def test_request_pixels_over_the_budget_are_refused() -> None:
    images = opened_sizes((100, 50), (30, 20), (1, 1))
    with pytest.raises(ResourceExhausted) as caught:
        check_request_pixels(images, 5_600)
    assert caught.value.message == (
        "the request's images add up to 5,601 pixels, over the budget of 5,600 pixels per "
        "request: split them over smaller requests"
    )
    assert caught.value.status_code.name == "RESOURCE_EXHAUSTED"


def test_request_budget_counts_header_sizes_before_any_decoding() -> None:
    # Each image is within the per-image cap; together they are not, and none was decoded.
    side = 6_000
    images = [open_image(png_claiming(side, side), i, LIMITS) for i in range(3)]
    with pytest.raises(
        ResourceExhausted, match="108,000,000 pixels, over the budget of 100,000,000"
    ):
        check_request_pixels(images, LIMITS.max_request_pixels)


# --- EXIF orientation ------------------------------------------------------------------------


def shown(stored: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """What a viewer shows for ``stored`` pixels tagged ``orientation``, from the EXIF/TIFF spec
    (which sides of the picture the stored 0th row and 0th column are), written with numpy."""
    upright: dict[int, Callable[[NDArray[np.uint8]], NDArray[np.uint8]]] = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # row 0 top, column 0 right: mirrored
        3: lambda a: a[::-1, ::-1],  # row 0 bottom, column 0 right: upside down
        4: lambda a: a[::-1, :],  # row 0 bottom, column 0 left
        5: lambda a: a.transpose(1, 0, 2),  # row 0 left, column 0 top
        6: lambda a: np.rot90(a, k=-1),  # row 0 right, column 0 top: turn clockwise
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
        8: lambda a: np.rot90(a, k=1),  # row 0 left, column 0 bottom: turn anticlockwise
    }
    return np.ascontiguousarray(upright[orientation](stored))


def exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    return exif.tobytes()


def cat_rgb() -> Image.Image:
    with Image.open(IMAGES / "cat.png") as image:
        return image.convert("RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    stored = cat_rgb()
    # PNG with an eXIf chunk: lossless, so the comparison is exact.
    data = encode(stored, "PNG", exif=exif_orientation(orientation))
    decoded = decode_image(data, 0, LIMITS)
    expected = shown(np.asarray(stored), orientation)
    assert np.array_equal(np.asarray(decoded), expected)
    assert decoded.size == (expected.shape[1], expected.shape[0])
    # The orientation was used up: applying it again changes nothing.
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(decoded)), expected)
    # Turned off, the pixels stay as stored.
    raw = decode_image(data, 0, ImageLimits(exif_transpose=False))
    assert np.array_equal(np.asarray(raw), np.asarray(stored))


def test_photo_taken_in_portrait_is_classified_upright() -> None:
    # A phone held upright stores the picture turned anticlockwise and tags it 6 (turn clockwise).
    upright = cat_rgb()
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    data = encode(stored, "JPEG", quality=95, exif=exif_orientation(6))
    tensor = load_image(data, 0, LIMITS, LITE0)
    expected = LITE0.apply(upright)
    assert float(np.abs(tensor - expected).mean()) < 0.02
    sideways = load_image(data, 0, ImageLimits(exif_transpose=False), LITE0)
    assert float(np.abs(sideways - expected).mean()) > 0.1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_with_jpeg_draft(orientation: int) -> None:
    with Image.open(io.BytesIO(big_jpeg())) as image:
        data = encode(image, "JPEG", quality=90, exif=exif_orientation(orientation))
    raw = decode_image(data, 0, ImageLimits(exif_transpose=False), target=(224, 224))
    decoded = decode_image(data, 0, LIMITS, target=(224, 224))
    assert raw.size == (400, 267)
    # The same drafted decode, then only turned: exactly equal.
    assert np.array_equal(np.asarray(decoded), shown(np.asarray(raw), orientation))


def test_draft_aims_at_the_target_once_upright() -> None:
    with Image.open(io.BytesIO(big_jpeg())) as image:
        data = encode(image, "JPEG", quality=90, exif=exif_orientation(6))
    # Upright the photo is 1067x1600; to be at least 400 wide it can only be halved, although
    # 1/4 scale (267x400 upright) would have satisfied the target read the stored way round.
    assert decode_image(data, 0, LIMITS, target=(400, 150)).size == (534, 800)
    assert decode_image(data, 0, LIMITS, target=(150, 400)).size == (267, 400)


def tiff_ifd(*entries: tuple[int, int, int, bytes]) -> bytes:
    """Little-endian EXIF: one IFD of (tag, type, count, 4-byte value) entries, and no next IFD."""
    body = b"".join(struct.pack("<HHI", tag, kind, n) + value for tag, kind, n, value in entries)
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + body + struct.pack("<I", 0)


SHORT, ASCII = 3, 2
BROKEN_EXIF = {
    "not TIFF": b"this is not an EXIF block at all",
    "IFD past the end": b"II*\x00" + struct.pack("<I", 4_000),
    # The next-IFD offset and the end of the orientation entry are missing.
    "entry cut short": tiff_ifd((274, SHORT, 1, struct.pack("<HH", 6, 0)))[:-7],
    "value out of range": tiff_ifd((274, SHORT, 1, struct.pack("<HH", 9, 0))),
    "value zero": tiff_ifd((274, SHORT, 1, struct.pack("<HH", 0, 0))),
    "value as text": tiff_ifd((274, ASCII, 2, b"6\x00\x00\x00")),
    "value out of the block": tiff_ifd((274, SHORT, 8, struct.pack("<I", 60_000))),
}


def test_hand_written_exif_is_read() -> None:
    # The broken blocks above are built the same way; intact, the orientation is applied.
    data = encode(cat_rgb(), "PNG", exif=tiff_ifd((274, SHORT, 1, struct.pack("<HH", 6, 0))))
    assert decode_image(data, 0, LIMITS).size == (300, 451)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("blob", BROKEN_EXIF.values(), ids=BROKEN_EXIF.keys())
def test_broken_exif_is_ignored(blob: bytes, fmt: str) -> None:
    stored = cat_rgb()
    # JPEG carries EXIF in an APP1 segment that starts with this signature; PNG in eXIf as is.
    exif = b"Exif\x00\x00" + blob if fmt == "JPEG" else blob
    data = encode(stored, fmt, exif=exif)
    # Pillow may warn about the damage: record the warnings as production would show them,
    # instead of turning them into exceptions the way this test suite does.
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        decoded = decode_image(data, 0, LIMITS)
        raw = decode_image(data, 0, ImageLimits(exif_transpose=False))
    assert decoded.size == (451, 300)
    assert np.array_equal(np.asarray(decoded), np.asarray(raw))
    if fmt == "PNG":
        assert np.array_equal(np.asarray(decoded), np.asarray(stored))


def test_broken_exif_is_ignored_when_warnings_are_errors() -> None:
    # This suite turns warnings into errors: a warning raised inside the EXIF parser is caught too.
    data = encode(cat_rgb(), "PNG", exif=BROKEN_EXIF["entry cut short"])
    assert decode_image(data, 0, LIMITS).size == (451, 300)


# --- limits ----------------------------------------------------------------------------------


def test_limits_defaults_and_normalisation() -> None:
    assert LIMITS.max_pixels == DEFAULT_MAX_PIXELS
    assert LIMITS.allowed_formats == frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
    assert LIMITS.draft
    assert LIMITS.exif_transpose
    assert LIMITS.max_request_pixels == DEFAULT_MAX_REQUEST_PIXELS == 100_000_000
    assert ImageLimits(allowed_formats=frozenset({"png", "Jpeg"})).allowed_formats == {
        "PNG",
        "JPEG",
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_pixels": 0}, ValueError, "positive"),
        ({"max_pixels": -5}, ValueError, "positive"),
        ({"max_pixels": 1.5}, TypeError, "int"),
        ({"max_pixels": True}, TypeError, "int"),
        ({"allowed_formats": frozenset()}, ValueError, "at least one"),
        ({"allowed_formats": frozenset({"PNG", "HEIC", "FOO"})}, ValueError, "FOO, HEIC"),
        ({"allowed_formats": "PNG"}, TypeError, "one string"),
        ({"max_request_pixels": 0}, ValueError, "max_request_pixels must be positive"),
        ({"max_request_pixels": 2.0e8}, TypeError, "max_request_pixels must be an int"),
        ({"max_request_pixels": True}, TypeError, "max_request_pixels must be an int"),
        (
            {"max_pixels": 5_000, "max_request_pixels": 4_999},
            ValueError,
            r"max_request_pixels \(4,999\) must be at least max_pixels \(5,000\)",
        ),
        ({"max_pixels": 200_000_000}, ValueError, "must be at least max_pixels"),
    ],
)
def test_limits_validation(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ImageLimits(**kwargs)  # type: ignore[arg-type]


def test_request_budget_may_equal_the_image_cap() -> None:
    limits = ImageLimits(max_pixels=5_000, max_request_pixels=5_000)
    assert (limits.max_pixels, limits.max_request_pixels) == (5_000, 5_000)
