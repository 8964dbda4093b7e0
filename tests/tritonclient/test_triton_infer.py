"""ModelInfer through tritonclient: encoded images, pre-processed tensors, the classification
extension, request ids, asyncio, and the errors a malformed request gets."""

from __future__ import annotations

import queue
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from lite0 import CAT_JPG, COFFEE_JPG, MODEL, PHOTOS, TOLERANCE, Photo
from tritonclient.utils import InferenceServerException


def image_input(*photos: Photo) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("image", [len(photos), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[photo.data] for photo in photos], dtype=object))
    return tensor


def tensor_input(*photos: Photo) -> grpcclient.InferInput:
    data = np.concatenate([photo.tensor() for photo in photos])
    tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def assert_top1(probabilities: np.ndarray, photos: tuple[Photo, ...]) -> None:
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(photos), 1000)
    assert probabilities.argmax(axis=1).tolist() == [photo.label for photo in photos]
    for row, photo in zip(probabilities, photos, strict=True):
        assert row[photo.label] == pytest.approx(photo.probability, abs=TOLERANCE)
        assert row.sum() == pytest.approx(1.0, abs=1e-4)


def test_encoded_images(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer(MODEL, [image_input(*PHOTOS)])
    assert_top1(result.as_numpy("probabilities"), PHOTOS)
    response = result.get_response()
    assert (response.model_name, response.model_version) == (MODEL, "1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("probabilities", "FP32", [3, 1000])
    ]


def test_preprocessed_tensors(client: grpcclient.InferenceServerClient) -> None:
    for photo in PHOTOS:
        result = client.infer(MODEL, [tensor_input(photo)], model_version="1")
        assert_top1(result.as_numpy("probabilities"), (photo,))
    result = client.infer(MODEL, [tensor_input(*PHOTOS)])
    assert_top1(result.as_numpy("probabilities"), PHOTOS)


def test_classification_extension(client: grpcclient.InferenceServerClient) -> None:
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=3)]
    result = client.infer(MODEL, [image_input(CAT_JPG, COFFEE_JPG)], outputs=outputs)
    top3 = result.as_numpy("probabilities")
    assert top3.shape == (2, 3)
    assert top3.dtype == object
    rows = [[entry.decode().split(":") for entry in row] for row in top3]
    assert [[(index, label) for _, index, label in row] for row in rows] == [
        [("285", "Egyptian cat"), ("282", "tiger cat"), ("281", "tabby")],
        [("967", "espresso"), ("968", "cup"), ("504", "coffee mug")],
    ]
    assert float(rows[0][0][0]) == pytest.approx(CAT_JPG.probability, abs=TOLERANCE)
    assert float(rows[1][0][0]) == pytest.approx(COFFEE_JPG.probability, abs=TOLERANCE)
    assert float(rows[0][1][0]) == pytest.approx(0.0769, abs=TOLERANCE)


def test_request_id_is_echoed(client: grpcclient.InferenceServerClient) -> None:
    result = client.infer(MODEL, [image_input(CAT_JPG)], request_id="req-42")
    assert result.get_response().id == "req-42"


def test_async_infer_callback(client: grpcclient.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[grpcclient.InferResult, InferenceServerException | None]] = (
        queue.Queue()
    )
    client.async_infer(
        MODEL,
        [image_input(COFFEE_JPG)],
        callback=lambda result, error: answers.put((result, error)),
        request_id="async-1",
    )
    result, error = answers.get(timeout=60)
    assert error is None
    assert result.get_response().id == "async-1"
    assert_top1(result.as_numpy("probabilities"), (COFFEE_JPG,))


async def test_asyncio_client(server_address: str) -> None:
    async with aioclient.InferenceServerClient(url=server_address) as client:
        assert await client.is_server_live() is True
        assert await client.is_model_ready(MODEL) is True
        metadata = await client.get_model_metadata(MODEL)
        assert [t.name for t in metadata.inputs] == ["image", "input"]
        result = await client.infer(MODEL, [image_input(*PHOTOS)], request_id="aio-1")
        assert result.get_response().id == "aio-1"
        assert_top1(result.as_numpy("probabilities"), PHOTOS)
        result = await client.infer(MODEL, [tensor_input(CAT_JPG)])
        assert_top1(result.as_numpy("probabilities"), (CAT_JPG,))
        with pytest.raises(InferenceServerException) as raised:
            await client.infer("no_such_model", [image_input(CAT_JPG)])
        assert raised.value.status() == "StatusCode.NOT_FOUND"


def raw_size_mismatch() -> list[grpcclient.InferInput]:
    """tritonclient checks the array against the shape only in set_data_from_numpy: a later
    set_shape sends one image's bytes under a shape of two."""
    tensor = tensor_input(CAT_JPG)
    tensor.set_shape([2, 3, 224, 224])
    return [tensor]


def named(name: str, datatype: str, data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return [tensor]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            lambda: named("pixels", "FP32", CAT_JPG.tensor()),
            "unknown input 'pixels' (inputs: image, input)",
        ),
        (
            lambda: named("input", "FP64", CAT_JPG.tensor().astype(np.float64)),
            "input 'input': datatype FP64, expected FP32",
        ),
        (
            lambda: named("input", "FP32", np.zeros((1, 3, 112, 224), np.float32)),
            "input 'input': shape [1, 3, 112, 224], expected [-1, 3, 224, 224] (-1 = any size)",
        ),
        (
            lambda: named("image", "BYTES", np.array([CAT_JPG.data], dtype=object)),
            "input 'image': BYTES [1], expected BYTES [N, 1] (one encoded image a row)",
        ),
        (
            lambda: named("image", "INT32", np.zeros((1, 1), np.int32)),
            "input 'image': INT32 [1, 1], expected BYTES [N, 1] (one encoded image a row)",
        ),
        (
            raw_size_mismatch,
            "input 'input': raw data is 602112 bytes, shape [2, 3, 224, 224] of FP32 needs 1204224",
        ),
        (
            lambda: named("image", "BYTES", np.array([[b"not an image"]], dtype=object)),
            "image 0: is not a recognised image (12 bytes)",
        ),
    ],
    ids=[
        "wrong-name", "wrong-datatype", "wrong-shape", "image-rank", "image-datatype",
        "raw-size", "not-an-image",
    ],
)  # fmt: skip
def test_bad_request_is_invalid_argument(
    client: grpcclient.InferenceServerClient,
    inputs: Callable[[], list[grpcclient.InferInput]],
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, inputs())
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == message


def test_unknown_model_or_version_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no_such_model", [image_input(CAT_JPG)])
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert "'no_such_model'" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [image_input(CAT_JPG)], model_version="2")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert raised.value.message() == "model 'efficientnet_lite0' has no version '2' (versions: 1)"


def test_unknown_output_is_invalid_argument(client: grpcclient.InferenceServerClient) -> None:
    outputs = [grpcclient.InferRequestedOutput("logits")]
    with pytest.raises(InferenceServerException) as raised:
        client.infer(MODEL, [image_input(CAT_JPG)], outputs=outputs)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert raised.value.message() == "unknown output 'logits' (outputs: probabilities)"


def test_a_request_with_both_inputs_is_served_from_the_tensor(
    client: grpcclient.InferenceServerClient,
) -> None:
    """Tools that fill every declared input (perf_analyzer's generated data) send both: the
    tensor is used and the images are not decoded (here they show another photo)."""
    result = client.infer(MODEL, [image_input(COFFEE_JPG), tensor_input(CAT_JPG)])
    assert_top1(result.as_numpy("probabilities"), (CAT_JPG,))
