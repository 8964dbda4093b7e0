"""The event loop is never blocked: health answers in milliseconds while a big request runs."""

from __future__ import annotations

import asyncio
import io
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import COFFEE_JPG, ServerThread


def large_photo() -> bytes:
    """A 2400x1600 photo, 0.7 MB: 16 of them fit in one request's default pixel budget."""
    image = Image.open(COFFEE_JPG).convert("RGB").resize((2400, 1600), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


async def test_health_answers_fast_while_64_large_images_are_classified(
    server: ServerThread,
) -> None:
    photo = large_photo()
    async with grpc.aio.insecure_channel(server.address) as channel:
        classifier = pb_grpc.ClassifierStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())  # the connection is up

        # Four requests of 16: each stays under the default pixel budget per request.
        big = asyncio.gather(
            *(
                classifier.Classify(pb.ClassifyRequest(images=[photo] * 16), timeout=120)
                for _ in range(4)
            )
        )
        await asyncio.sleep(0.05)  # let the server start decoding
        latencies = []
        while not big.done() and len(latencies) < 20:
            started = time.perf_counter()
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            latencies.append(time.perf_counter() - started)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(0.02)
        still_running = not big.done()
        responses = await big

    assert sum(len(response.classifications) for response in responses) == 64
    assert still_running, "the big request finished before health was probed: make it bigger"
    assert len(latencies) >= 3
    # Milliseconds, with room for a loaded 2-core machine; a blocked loop would take the whole
    # request's time (over a second here) for the first probe.
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies
    assert latencies[-1] < 0.5, latencies
