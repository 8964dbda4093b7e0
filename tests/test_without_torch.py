"""A server on ONNX Runtime needs nothing from PyTorch: run with `torch` made unimportable, it
serves every API, and a PyTorch backend is refused with the install hint."""

from __future__ import annotations

import struct
import subprocess
import sys

import grpc
import numpy as np
import pytest

from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, ROOT, TEST_ARTIFACTS

MODULE = "tests.serve_without_torch"
ARGUMENTS = ["--model", "efficientnet_lite0", "--artifacts", str(TEST_ARTIFACTS),
             "--metrics-port", "0"]  # fmt: skip


def test_every_api_is_served_without_pytorch(lite0_export: ExportResult) -> None:
    image = CAT_JPG.read_bytes()
    with (
        ServerProcess([*ARGUMENTS, "--backend", "onnxruntime"], module=MODULE) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        tutorial = inference_pb2_grpc.InferenceServerStub(channel)
        assert list(tutorial.inference(inference_pb2.InferenceRequest(image=[image])).pred) == [
            EGYPTIAN_CAT
        ]
        classifier = pb_grpc.ClassifierStub(channel)
        reply = classifier.Classify(pb.ClassifyRequest(images=[image], top_k=1))
        assert reply.classifications[0].labels[0].name == "Egyptian cat"
        request = kserve.ModelInferRequest(
            model_name="efficientnet_lite0",
            inputs=[kserve.ModelInferRequest.InferInputTensor(
                name="image", datatype="BYTES", shape=[1, 1])],
            raw_input_contents=[struct.pack("<I", len(image)) + image],
        )  # fmt: skip
        response = kserve_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        probabilities = np.frombuffer(response.raw_output_contents[0], np.float32)
        assert int(probabilities.argmax()) == EGYPTIAN_CAT
        assert abs(float(probabilities.max()) - 0.8117) < 2e-3


def test_a_pytorch_backend_says_what_to_install(lite0_export: ExportResult) -> None:
    done = subprocess.run(
        [sys.executable, "-m", MODULE, *ARGUMENTS, "--backend", "torchscript", "--port", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "the torchscript backend needs torch: pip install 'torchgrpc[torch]'" in done.stderr


@pytest.mark.parametrize("package", ["torch", "torchvision", "onnx"])
def test_the_blocker_really_blocks(package: str) -> None:
    """The other tests mean something only if the import fails in that process."""
    probe = f"import tests.serve_without_torch\nimport {package}"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 1
    assert "ImportError" in done.stderr or "ModuleNotFoundError" in done.stderr
