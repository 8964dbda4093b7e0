"""Batching over gRPC: many concurrent clients, split requests, deadlines and backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from serve.config import ServerConfig
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import (
    CAT_JPG,
    COFFEE_JPG,
    EGYPTIAN_CAT,
    ESPRESSO,
    ServerThread,
    config_with,
)

CAT, COFFEE = CAT_JPG.read_bytes(), COFFEE_JPG.read_bytes()


async def test_many_concurrent_clients_each_get_their_own_answers(server: ServerThread) -> None:
    batcher = server.server.core.model("efficientnet_lite0").batcher
    before = sum(n for size, n in batcher.stats.batch_sizes.items() if size > 1)
    # 40 clients at once, each with its own mix; one asks for 20 images, more than a batch
    # holds, so it is split across batches and put back together in order.
    mixes = [[CAT, COFFEE][i % 2 :] + [CAT] * (i % 3) for i in range(39)]
    mixes.append([CAT, COFFEE] * 10)
    expected = [[EGYPTIAN_CAT if image == CAT else ESPRESSO for image in mix] for mix in mixes]
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        replies = await asyncio.gather(
            *(
                stub.inference(inference_pb2.InferenceRequest(image=mix), timeout=60)
                for mix in mixes
            )
        )
    assert [list(reply.pred) for reply in replies] == expected
    after = sum(n for size, n in batcher.stats.batch_sizes.items() if size > 1)
    assert after > before, "no batch held more than one image: requests were not coalesced"


async def test_a_lone_image_on_an_idle_server_is_decoded_and_run_in_one_hop(
    server: ServerThread,
) -> None:
    batcher = server.server.core.model("efficientnet_lite0").batcher
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        before = batcher.stats.one_hop
        reply = await stub.inference(inference_pb2.InferenceRequest(image=[CAT]), timeout=60)
        assert list(reply.pred) == [EGYPTIAN_CAT]
        assert batcher.stats.one_hop == before + 1
        # Two images decode in parallel in the pool instead, then go through the queue.
        reply = await stub.inference(
            inference_pb2.InferenceRequest(image=[CAT, COFFEE]), timeout=60
        )
        assert list(reply.pred) == [EGYPTIAN_CAT, ESPRESSO]
        assert batcher.stats.one_hop == before + 1


async def test_an_expired_deadline_fails_only_that_request(server: ServerThread) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        hurried = stub.inference(inference_pb2.InferenceRequest(image=[CAT] * 32), timeout=0.001)
        patient = stub.inference(inference_pb2.InferenceRequest(image=[COFFEE]), timeout=60)
        results = await asyncio.gather(hurried, patient, return_exceptions=True)
    assert isinstance(results[0], grpc.aio.AioRpcError)
    assert results[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(results[1], inference_pb2.InferenceReply)
    assert list(results[1].pred) == [ESPRESSO]


@pytest.fixture(scope="module")
def tiny_queue_server(base_config: ServerConfig) -> Iterator[ServerThread]:
    config = config_with(
        base_config, models=("efficientnet_lite0",), instances=1, max_batch_size=1,
        max_queue_size=4,
    )  # fmt: skip
    with ServerThread(config) as running:
        yield running


async def test_a_full_queue_is_resource_exhausted_and_the_rest_succeed(
    tiny_queue_server: ServerThread,
) -> None:
    async with grpc.aio.insecure_channel(tiny_queue_server.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        calls = [stub.Classify(pb.ClassifyRequest(images=[CAT] * 3), timeout=60) for _ in range(20)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    served = [r for r in results if isinstance(r, pb.ClassifyResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(served) + len(refused) == 20
    assert served and refused
    for response in served:
        assert [c.labels[0].class_id for c in response.classifications] == [EGYPTIAN_CAT] * 3
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in (error.details() or "")


def test_a_request_larger_than_the_queue_is_invalid(tiny_queue_server: ServerThread) -> None:
    with (
        grpc.insecure_channel(tiny_queue_server.address) as channel,
        pytest.raises(grpc.RpcError) as failure,
    ):
        pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(images=[CAT] * 5))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than max_queue_size (4)" in failure.value.details()
