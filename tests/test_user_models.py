"""A user's own models next to each other: an image classifier made here and wrapped with
``python -m export --wrap`` answers all three APIs; a plain tensor model answers the KServe API
and gets a clear refusal from the image APIs; each runs with its own settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn

from export.__main__ import main as export_main
from export.convert import torchscript_is_wanted
from serve.config import ServerConfig
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve_pb2
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_pb2_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2, classifier_pb2_grpc
from tests.conftest import CAT_JPG, COFFEE_JPG, ServerThread
from tests.tiny_models import ADDER_CONFIG, write_model_folder

LABELS = [f"class {i}" for i in range(5)]


class TinyClassifier(nn.Module):
    """Five classes from a 32x32 image: mean colour through a fixed linear map, so the answer
    depends on the picture."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1)) * 10


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user-models")
    repo = folder / "repository"
    onnx_file = folder / "tiny.onnx"
    with torchscript_is_wanted():  # the classic exporter, quietly: what many users still run
        torch.onnx.export(
            TinyClassifier().eval(), (torch.zeros(1, 3, 32, 32),), str(onnx_file),
            input_names=["pixels"], output_names=["scores"],
            dynamic_axes={"pixels": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False,
        )  # fmt: skip
    labels = folder / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    assert export_main([
        "--wrap", str(onnx_file), "--name", "tiny", "--repository", str(repo),
        "--image", "32x32", "--labels", str(labels), "--scale", "1/255",
        "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--softmax", "--max-batch-size", "4",
    ]) == 0  # fmt: skip
    config = repo / "tiny" / "config.pbtxt"
    config.write_text(config.read_text() + "instance_group [ { count: 1 kind: KIND_CPU } ]\n")
    write_model_folder(
        repo, "adder", ADDER_CONFIG + "instance_group [ { count: 2 kind: KIND_CPU } ]\n", {1: 1}
    )
    return repo


@pytest.fixture(scope="module")
def address(repository: Path) -> Iterator[str]:
    config = ServerConfig(model_repository=repository, models=("tiny", "adder"), port=0)
    with ServerThread(config) as running:
        yield running.address


def expected_class(image: Path) -> int:
    """What the classifier computes, pre-processed here by hand: resize, scale, mean, std."""
    from PIL import Image

    with Image.open(image) as opened:
        rgb = np.asarray(opened.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    x = (rgb.astype(np.float32) / 255 - 0.5) / 0.25
    with torch.no_grad():
        scores = TinyClassifier()(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    return int(scores.argmax())


def test_a_wrapped_classifier_answers_the_tutorial_api(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        reply = inference_pb2_grpc.InferenceServerStub(channel).inference(
            inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes(), COFFEE_JPG.read_bytes()])
        )
    assert list(reply.pred) == [expected_class(CAT_JPG), expected_class(COFFEE_JPG)]


def test_a_wrapped_classifier_answers_the_classifier_api_with_its_labels(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        reply = stub.Classify(
            classifier_pb2.ClassifyRequest(images=[CAT_JPG.read_bytes()], top_k=3, model="tiny")
        )
        listed = stub.ListModels(classifier_pb2.ListModelsRequest())
    (labels,) = [c.labels for c in reply.classifications]
    assert labels[0].class_id == expected_class(CAT_JPG)
    assert [label.name for label in labels] == [LABELS[label.class_id] for label in labels]
    assert sum(label.probability for label in labels) <= 1.0
    tiny = {m.name: m for m in listed.models}["tiny"]
    assert (tiny.input_height, tiny.input_width, tiny.num_classes) == (32, 32, 5)
    assert listed.default_model == "tiny"


def test_a_tensor_model_is_refused_by_the_image_apis(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(
                classifier_pb2.ClassifyRequest(images=[CAT_JPG.read_bytes()], model="adder")
            )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "takes tensors, not images: use the KServe API" in str(refused.value.details())


def test_each_model_runs_with_its_own_settings(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        tiny = stub.ModelConfig(kserve_pb2.ModelConfigRequest(name="tiny")).config
        adder = stub.ModelConfig(kserve_pb2.ModelConfigRequest(name="adder")).config
    assert (tiny.max_batch_size, tiny.instance_group[0].count) == (4, 1)
    assert (adder.max_batch_size, adder.instance_group[0].count) == (8, 2)
    assert [i.name for i in tiny.input] == ["image", "pixels"]
    assert [o.name for o in tiny.output] == ["probabilities"]
    assert tiny.output[0].label_filename == "labels.txt"
    assert tiny.parameters["image_input"].string_value == "pixels"
    assert tiny.platform == "onnxruntime_onnx"
