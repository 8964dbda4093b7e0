"""ModelStreamInfer through tritonclient: every request answered once, in order, with its id; a
bad request answered with an error while the stream goes on, unless the client asked for real
gRPC errors (header ``triton_grpc_error``): then the stream ends with the error's status.

tritonclient hands an ``error_message`` to the callback as an exception without the response, so
an error can be placed only by its position: answers come in the requests' order, as Triton's do.
"""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from lite0 import CAT_JPG, CAT_PNG, COFFEE_JPG, MODEL, TOLERANCE, Photo
from tritonclient.utils import InferenceServerException

BAD_SHAPE = "input 'input': shape [1, 3, 112, 224], expected [-1, 3, 224, 224] (-1 = any size)"
Answer = tuple[grpcclient.InferResult | None, InferenceServerException | None]


def image_input(photo: Photo) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[photo.data]], dtype=object))
    return tensor


def bad_shape_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("input", [1, 3, 112, 224], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 112, 224), np.float32))
    return tensor


def check_result(result: grpcclient.InferResult, photo: Photo) -> None:
    (row,) = result.as_numpy("probabilities")
    assert int(row.argmax()) == photo.label
    assert float(row[photo.label]) == pytest.approx(photo.probability, abs=TOLERANCE)


def check_answers(answers: list[Answer], photos: dict[str, Photo], order: list[str]) -> None:
    """One error (the bad request's) and one result per good request, each right for its id,
    all in the requests' ``order`` ("error" for the bad one)."""
    assert [r.get_response().id if r is not None else "error" for r, _ in answers] == order
    errors = [error for result, error in answers if error is not None]
    assert [(error.message(), error.status()) for error in errors] == [(BAD_SHAPE, None)]
    assert all(result is None for result, error in answers if error is not None)
    results = {r.get_response().id: r for r, e in answers if r is not None and e is None}
    assert sorted(results) == sorted(photos)
    for request_id, result in results.items():
        check_result(result, photos[request_id])


def test_stream_infer(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[Answer] = queue.Queue()
    photos = {"s1": CAT_JPG, "s2": COFFEE_JPG, "s4": CAT_PNG, "s5": COFFEE_JPG}
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for request_id in ("s1", "s2"):
            client.async_stream_infer(
                MODEL, [image_input(photos[request_id])], request_id=request_id
            )
        client.async_stream_infer(MODEL, [bad_shape_input()], request_id="s3")
        for request_id in ("s4", "s5"):
            client.async_stream_infer(
                MODEL, [image_input(photos[request_id])], request_id=request_id
            )
        check_answers(
            [answers.get(timeout=60) for _ in range(5)], photos, ["s1", "s2", "error", "s4", "s5"]
        )
        # The stream is still open after the error: one more round trip on it.
        client.async_stream_infer(MODEL, [image_input(CAT_PNG)], request_id="s6")
        result, error = answers.get(timeout=60)
        assert error is None and result is not None
        assert result.get_response().id == "s6"
        check_result(result, CAT_PNG)
    finally:
        client.stop_stream()
    assert answers.empty()


async def test_asyncio_stream_infer(server_address: str) -> None:
    requests = [
        ("a1", [image_input(CAT_JPG)]),
        ("a2", [bad_shape_input()]),
        ("a3", [image_input(COFFEE_JPG)]),
        ("a4", [image_input(CAT_PNG)]),
    ]

    async def request_stream() -> AsyncIterator[dict[str, object]]:
        for request_id, inputs in requests:
            yield {"model_name": MODEL, "inputs": inputs, "request_id": request_id}

    async with aioclient.InferenceServerClient(url=server_address) as client:
        answers = [answer async for answer in client.stream_infer(request_stream())]
    check_answers(
        answers, {"a1": CAT_JPG, "a3": COFFEE_JPG, "a4": CAT_PNG}, ["a1", "error", "a3", "a4"]
    )


def test_triton_grpc_error_ends_the_stream_with_the_status(
    client: grpcclient.InferenceServerClient,
) -> None:
    answers: queue.Queue[Answer] = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)),
        headers={"triton_grpc_error": "true"},
    )
    try:
        client.async_stream_infer(MODEL, [image_input(CAT_JPG)], request_id="g1")
        client.async_stream_infer(MODEL, [bad_shape_input()], request_id="g2")
        result, error = answers.get(timeout=60)
        assert error is None and result is not None and result.get_response().id == "g1"
        result, error = answers.get(timeout=60)
        assert result is None and error is not None
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert BAD_SHAPE in error.message()
    finally:
        client.stop_stream()
