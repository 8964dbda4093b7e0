"""Admission before work: whatever a request holds, the server's memory stays bounded and a
neighbour's request still succeeds. Real server processes, so their memory can be read."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, TEST_ARTIFACTS

# A decoded 224x224 image is 0.6 MB; the queue holds at most QUEUE rows, decoding included.
QUEUE = 64
ROW_BYTES = 3 * 224 * 224 * 4
# The bound the tests hold the server to: a full queue of decoded rows, plus room for the
# requests' own bytes and the allocator's slack.
PEAK_GROWTH_BOUND = QUEUE * ROW_BYTES + 120 * 2**20


def one_pixel_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss(server: ServerProcess) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmHWM not found")


@pytest.fixture(scope="module")
def admitting_server(lite0_export: ExportResult) -> Iterator[ServerProcess]:
    """Lite0 with a small queue and no cap on images per request, so the queue bound alone
    stands between a huge request and the decoder."""
    arguments = ["--model", "efficientnet_lite0", "--artifacts", str(TEST_ARTIFACTS),
                 "--max-queue-size", str(QUEUE), "--max-images-per-request", "100000",
                 "--max-message-bytes", str(256 * 2**20)]  # fmt: skip
    with ServerProcess(arguments) as server:
        yield server


async def classify_cat(channel: grpc.aio.Channel, copies: int = 1) -> int:
    stub = inference_pb2_grpc.InferenceServerStub(channel)
    reply = await stub.inference(
        inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()] * copies), timeout=60
    )
    return int(reply.pred[0])


async def warm(channel: grpc.aio.Channel) -> None:
    """Full batches once, so the model's memory arenas have grown to their working size before
    the baseline is read."""
    assert await classify_cat(channel, copies=QUEUE) == EGYPTIAN_CAT


async def test_huge_requests_are_refused_before_any_decoding(
    admitting_server: ServerProcess,
) -> None:
    png = one_pixel_png()
    async with grpc.aio.insecure_channel(admitting_server.address) as channel:
        await warm(channel)
        before = peak_rss(admitting_server)
        stub = pb_grpc.ClassifierStub(channel)

        huge = stub.Classify(pb.ClassifyRequest(images=[png] * 50_000), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await huge
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"50000 rows (images), more than max_queue_size ({QUEUE})" in (
            refused.value.details() or ""
        )

        # Eight concurrent requests, each within the queue but together far over it: the first
        # is admitted, the rest are refused at once, and a neighbour still gets in beside it.
        crowd = [
            asyncio.ensure_future(
                stub.Classify(pb.ClassifyRequest(images=[png] * (QUEUE - 4)), timeout=60)
            )
            for _ in range(8)
        ]
        neighbour = await classify_cat(channel)
        outcomes = await asyncio.gather(*crowd, return_exceptions=True)
        grown = peak_rss(admitting_server) - before

    assert neighbour == EGYPTIAN_CAT
    served = [o for o in outcomes if isinstance(o, pb.ClassifyResponse)]
    refusals = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(served) + len(refusals) == 8
    assert served, "no request of the crowd was served"
    assert all(len(o.classifications) == QUEUE - 4 for o in served)
    assert refusals, "the crowd never filled the queue"
    assert {r.code() for r in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grown < PEAK_GROWTH_BOUND, f"peak RSS grew by {grown / 2**20:.0f} MiB"


async def test_a_stream_that_never_reads_holds_bounded_memory(
    admitting_server: ServerProcess,
) -> None:
    """The server stops reading a stream whose answers aren't read: writes on the client side
    stall (backpressure), the server's memory stays bounded, and others are still served."""
    image = CAT_JPG.read_bytes()
    # A client that buffers little of what it doesn't read (gRPC's receive window otherwise grows
    # to megabytes of small answers), so the server feels it within seconds.
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
    async with grpc.aio.insecure_channel(admitting_server.address, options=small_window) as channel:
        await warm(channel)
        before = peak_rss(admitting_server)
        stream = pb_grpc.ClassifierStub(channel).ClassifyStream(timeout=120)
        written = 0
        stalled = False
        for index in range(20_000):
            try:
                await asyncio.wait_for(
                    stream.write(pb.ClassifyStreamRequest(id=str(index), image=image)), 5.0
                )
            except TimeoutError:
                stalled = True
                break
            written += 1
        # Answers pile up unread meanwhile; the neighbour must not notice.
        neighbour = await classify_cat(channel)
        grown = peak_rss(admitting_server) - before
        stream.cancel()

    assert stalled, f"all {written} items were accepted: the server never pushed back"
    assert neighbour == EGYPTIAN_CAT
    assert grown < PEAK_GROWTH_BOUND, f"peak RSS grew by {grown / 2**20:.0f} MiB"


async def test_many_streams_over_a_small_queue_lose_no_item(
    admitting_server: ServerProcess,
) -> None:
    """Streams wait for room in the queue instead of failing their items."""
    image = CAT_JPG.read_bytes()
    streams, items = 12, 12  # 144 images through a queue of 64

    async def one_stream(
        stub: pb_grpc.ClassifierStub, number: int
    ) -> list[pb.ClassifyStreamResponse]:
        requests = [
            pb.ClassifyStreamRequest(id=f"{number}-{i}", image=image, top_k=1) for i in range(items)
        ]
        return [response async for response in stub.ClassifyStream(iter(requests), timeout=120)]

    async with grpc.aio.insecure_channel(admitting_server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        results = await asyncio.gather(*(one_stream(stub, n) for n in range(streams)))

    for number, responses in enumerate(results):
        assert sorted(r.id for r in responses) == sorted(f"{number}-{i}" for i in range(items))
        assert [r.WhichOneof("outcome") for r in responses] == ["classification"] * items
        assert {r.classification.labels[0].class_id for r in responses} == {EGYPTIAN_CAT}
