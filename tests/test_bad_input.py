"""Every kind of bad request gets a precise status and message, and harms nobody else."""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import time
import zlib

import grpc
import pytest
from PIL import Image

from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, COFFEE_JPG, EGYPTIAN_CAT, ServerThread


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width`` x ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    data = b"IDAT" + zlib.compress(b"\0" * 16)
    idat = struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


CAT = CAT_JPG.read_bytes()

BAD_IMAGES = {
    "not an image": (b"hello, world" * 10, "not a recognised image"),
    "truncated JPEG": (CAT[: len(CAT) // 2], "truncated or corrupt"),
    "empty image": (b"", "is empty"),
    "decompression bomb": (png_claiming(50_000, 50_000), "2,500,000,000 pixels, over the limit"),
    "format not allowed": (
        encoded(Image.new("RGB", (64, 64)), "TIFF"),
        "format TIFF is not allowed",
    ),
}


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.ClassifierStub:
    return pb_grpc.ClassifierStub(channel)


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_invalid_argument_naming_the_image(
    stub: pb_grpc.ClassifierStub, case: str
) -> None:
    data, reason = BAD_IMAGES[case]
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(images=[CAT, CAT, data]), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("image 2: ")
    assert reason in failure.value.details()


def test_empty_request_is_invalid_argument(stub: pb_grpc.ClassifierStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(images=[]))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details() == "the request has no images"


def test_a_bomb_is_refused_fast(stub: pb_grpc.ClassifierStub) -> None:
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(images=[png_claiming(50_000, 50_000)]))
    assert time.perf_counter() - started < 1.0


def test_over_the_message_limit_is_resource_exhausted(stub: pb_grpc.ClassifierStub) -> None:
    too_big = b"\0" * (64 * 1024 * 1024 + 1)
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(images=[too_big]), timeout=60)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-message-bytes" in failure.value.details()


@pytest.mark.parametrize("mode", ["L", "I;16", "CMYK", "P", "RGBA", "LA", "1"])
def test_every_pixel_mode_is_converted(stub: pb_grpc.ClassifierStub, mode: str) -> None:
    cat = Image.open(CAT_JPG)
    converted = cat.convert(mode) if mode != "I;16" else cat.convert("L").convert(mode)
    data = encoded(converted, "JPEG" if mode == "CMYK" else "PNG")
    response = stub.Classify(pb.ClassifyRequest(images=[data], top_k=1), timeout=30)
    assert len(response.classifications) == 1
    if mode in {"RGBA", "P", "CMYK"}:
        assert response.classifications[0].labels[0].class_id == EGYPTIAN_CAT


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF", "BMP", "JPEG"])
def test_every_default_format_is_accepted(stub: pb_grpc.ClassifierStub, fmt: str) -> None:
    image = Image.open(COFFEE_JPG).convert("RGB")
    response = stub.Classify(pb.ClassifyRequest(images=[encoded(image, fmt)], top_k=1), timeout=30)
    assert len(response.classifications[0].labels) == 1


async def test_bad_requests_dont_harm_good_ones_in_flight(server: ServerThread) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        good = [stub.Classify(pb.ClassifyRequest(images=[CAT, CAT])) for _ in range(12)]
        bad = [
            stub.Classify(pb.ClassifyRequest(images=[CAT, data])) for data, _ in BAD_IMAGES.values()
        ]
        results = await asyncio.gather(*good, *bad, return_exceptions=True)
    for response in results[: len(good)]:
        assert isinstance(response, pb.ClassifyResponse)
        assert [c.labels[0].class_id for c in response.classifications] == [EGYPTIAN_CAT] * 2
    for error in results[len(good) :]:
        assert isinstance(error, grpc.aio.AioRpcError)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# Not protobuf: a field tag with an invalid wire type.
BAD_WIRE_FORMAT = b"\xff\xff\xff\xff"
MALFORMED = [
    ("/InferenceServer/inference", BAD_WIRE_FORMAT),
    ("/torchgrpc.v1.Classifier/Classify", BAD_WIRE_FORMAT),
    ("/inference.GRPCInferenceService/ModelInfer", BAD_WIRE_FORMAT),
    # A string field holding bytes that are not UTF-8: `model` (3), `model_name` (1).
    ("/torchgrpc.v1.Classifier/Classify", b"\x1a\x02\xc3\x28"),
    ("/inference.GRPCInferenceService/ModelInfer", b"\x0a\x02\xc3\x28"),
]
STREAM_METHODS = [
    "/torchgrpc.v1.Classifier/ClassifyStream",
    "/inference.GRPCInferenceService/ModelStreamInfer",
]


@pytest.mark.parametrize(("method", "data"), MALFORMED)
def test_a_malformed_message_is_invalid_argument_and_logs_no_traceback(
    server: ServerThread, method: str, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as error:
        channel.unary_unary(method)(data, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error.value.details()).startswith("the request is not a valid message")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("method", STREAM_METHODS)
def test_a_malformed_stream_item_ends_the_stream_with_invalid_argument(
    server: ServerThread, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as error:
        list(channel.stream_stream(method)(iter([BAD_WIRE_FORMAT]), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
