"""A repository of users' own models, served at once and called with tritonclient.

build_repository.py (under the server's Python) makes the repository: the built-in
efficientnet_lite0 on ONNX Runtime, a torchvision classifier in TorchScript, a two-input tensor
model in ONNX, a torch.export program, and a broken model; and the eager modules' answers to fixed
inputs. A second server serves it with ``--model-control explicit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import ROOT, server_python
from lite0 import CAT_JPG, TOLERANCE
from numpy.typing import NDArray
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype
from user_models import (
    BROKEN,
    CLASSIFIER,
    CLASSIFIER_IMAGE,
    CLASSIFIER_LABELS,
    EXPECTED_NAME,
    LITE0,
    PAIR,
    PAIR_BATCH,
    PAIR_VERSION_2_NAME,
    PROGRAM,
    PROGRAM_BATCHES,
    SERVED,
    classifier_input,
    pair_inputs,
    program_input,
)

from benchmarks.process import ServerProcess

HERE = Path(__file__).resolve().parent
BUILDER = HERE / "build_repository.py"
# Built repositories, one per content key (see build_key): rebuilt only when an input changes.
CACHE = ROOT / ".cache" / "tritonclient-repository"
IMAGES = ROOT / "tests" / "images"
# The reason starts with the version folder's real path (the session's copy of the repository).
BROKEN_REASON = (
    "/broken/1: model.onnx is not a model ONNX Runtime can load: Protobuf parsing failed."
)


def broken_entry(index: list[dict[str, str]]) -> dict[str, str]:
    """The broken model's index entry, its reason cut to what follows the repository's path."""
    entry = dict(index[0])
    entry["reason"] = entry["reason"][entry["reason"].index("/broken/1: ") :]
    return entry


# Eager against the served file (the same float32 operations, another runtime).
ATOL = 1e-4


@dataclass(frozen=True)
class Built:
    # This session's repository: a hard-linked copy of the cached build, which tests may change.
    folder: Path
    # The eager modules' answers (build_repository.py writes them).
    expected: dict[str, Any]
    pair_version_2: Path


def build_key() -> str:
    """Everything the build reads that may change: the builder, the export code that writes the
    entries, and the built-in model's export (its manifest changes with its files)."""
    sources = [BUILDER, HERE / "user_models.py", *sorted((ROOT / "export").rglob("*.py"))]
    manifest = ROOT / ".cache" / "test-artifacts" / LITE0 / "manifest.json"
    digest = hashlib.sha256()
    for path in [*sources, manifest]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes() if path.exists() else b"absent")
    return digest.hexdigest()[:16]


def cached_build() -> Path:
    """The build folder for the current key, built (and older builds removed) when missing."""
    key = build_key()
    built = CACHE / key
    if built.exists():
        return built
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [server_python(), str(BUILDER), str(staging / "repository")]
    finished = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        shutil.rmtree(staging)
        raise RuntimeError(f"build_repository.py failed:\n{finished.stdout}{finished.stderr}")
    for old in CACHE.iterdir():
        if not old.name.startswith("."):  # finished builds; a session's folders are hidden
            shutil.rmtree(old)
    staging.rename(built)
    return built


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    build = cached_build()
    # Beside the cache, so hard links work (one file system): tests add and remove version
    # folders, never write into a linked file.
    with tempfile.TemporaryDirectory(prefix=".session-", dir=CACHE) as session:
        folder = Path(session) / "repository"
        shutil.copytree(build / "repository", folder, copy_function=os.link)
        expected = json.loads((build / EXPECTED_NAME).read_text())
        yield Built(folder, expected, build / PAIR_VERSION_2_NAME)


@pytest.fixture(scope="session")
def repository_client(built: Built) -> Iterator[grpcclient.InferenceServerClient]:
    # No --model: every model of the repository loads; --backend picks ONNX where there is one.
    arguments = ["--model-repository", str(built.folder), "--model-control", "explicit",
                 "--backend", "onnxruntime"]  # fmt: skip
    with ServerProcess(arguments, python=server_python(), cwd=ROOT) as server:
        opened = grpcclient.InferenceServerClient(url=server.address)
        yield opened
        opened.close()


def tensor(name: str, data: NDArray[Any]) -> grpcclient.InferInput:
    sent = grpcclient.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
    sent.set_data_from_numpy(data)
    return sent


def image(name: str) -> grpcclient.InferInput:
    return tensor("image", np.array([[(IMAGES / name).read_bytes()]], dtype=object))


def pair_request() -> list[grpcclient.InferInput]:
    a, b = pair_inputs(PAIR_BATCH)
    return [tensor("a", a), tensor("b", b)]


def assert_close(answer: NDArray[Any], expected: list[Any]) -> None:
    assert answer.dtype == np.float32
    np.testing.assert_allclose(answer, np.array(expected, dtype=np.float32), rtol=0, atol=ATOL)


# -- the repository, as a Triton user looks at it ---------------------------------------------

# name: (platform, inputs, outputs), each tensor (name, datatype, shape with the batch axis).
SIGNATURES = {
    LITE0: (
        "onnxruntime_onnx",
        [("image", "BYTES", [-1, 1]), ("input", "FP32", [-1, 3, 224, 224])],
        [("probabilities", "FP32", [-1, 1000])],
    ),
    CLASSIFIER: (
        "pytorch_libtorch",
        [("image", "BYTES", [-1, 1]), ("input__0", "FP32", [-1, 3, 224, 224])],
        [("probabilities", "FP32", [-1, 10])],
    ),
    PAIR: (
        "onnxruntime_onnx",
        [("a", "FP32", [-1, 4]), ("b", "INT64", [-1, 3])],
        [("mixed", "FP32", [-1, 3]), ("total", "INT64", [-1, 1])],
    ),
    PROGRAM: (
        "torch_export",
        [("features", "FP32", [-1, 6])],
        [("output__0", "FP32", [-1, 3]), ("output__1", "FP32", [-1, 1])],
    ),
}
IMAGE_MODELS = (LITE0, CLASSIFIER)


def test_server_and_every_model_ready(repository_client: grpcclient.InferenceServerClient) -> None:
    assert repository_client.is_server_live() is True
    assert repository_client.is_server_ready() is True
    assert [repository_client.is_model_ready(name) for name in SERVED] == [True] * 4
    assert [repository_client.is_model_ready(name, "1") for name in SERVED] == [True] * 4
    assert repository_client.is_model_ready(BROKEN) is False
    extensions = repository_client.get_server_metadata().extensions
    assert "model_repository" in extensions


def test_repository_index(repository_client: grpcclient.InferenceServerClient) -> None:
    index = repository_client.get_model_repository_index(as_json=True)["models"]
    assert broken_entry(index) == {"name": BROKEN, "state": "UNAVAILABLE", "reason": BROKEN_REASON}
    assert index[1:] == [
        {"name": name, "version": "1", "state": "READY"} for name in sorted(SERVED)
    ]


def test_broken_model_is_not_served(repository_client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        repository_client.get_model_metadata(BROKEN)
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert BROKEN_REASON in raised.value.message()


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_model_metadata(repository_client: grpcclient.InferenceServerClient, name: str) -> None:
    platform, inputs, outputs = SIGNATURES[name]
    metadata = repository_client.get_model_metadata(name)
    assert (metadata.name, list(metadata.versions), metadata.platform) == (name, ["1"], platform)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == outputs


def config_type(datatype: str) -> int:
    """config.pbtxt's name for a protocol datatype: TYPE_<name>, BYTES as TYPE_STRING."""
    return int(model_config_pb2.DataType.Value(f"TYPE_{datatype}".replace("BYTES", "STRING")))


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_model_config(repository_client: grpcclient.InferenceServerClient, name: str) -> None:
    platform, inputs, outputs = SIGNATURES[name]
    config = repository_client.get_model_config(name).config
    assert (config.name, config.platform, config.max_batch_size) == (name, platform, 16)
    # dims leave out the batch axis; an image model takes either input, so both are optional.
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        (n, config_type(d), s[1:], name in IMAGE_MODELS) for n, d, s in inputs
    ]
    labels = "labels.txt" if name in IMAGE_MODELS else ""
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in config.output] == [
        (n, config_type(d), s[1:], labels) for n, d, s in outputs
    ]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.version_policy.latest.num_versions == 1


# -- each model's answers ------------------------------------------------------------------------


def test_lite0_classifies_an_image(repository_client: grpcclient.InferenceServerClient) -> None:
    result = repository_client.infer(LITE0, [image(CAT_JPG.name)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 1000)
    assert int(probabilities.argmax()) == CAT_JPG.label
    assert probabilities[0, CAT_JPG.label] == pytest.approx(CAT_JPG.probability, abs=TOLERANCE)


def test_classifier_tensor_input(
    repository_client: grpcclient.InferenceServerClient, built: Built
) -> None:
    result = repository_client.infer(CLASSIFIER, [tensor("input__0", classifier_input())])
    assert result.get_response().model_version == "1"
    assert_close(result.as_numpy("probabilities"), built.expected[CLASSIFIER]["tensor"])


def test_classifier_image_input(
    repository_client: grpcclient.InferenceServerClient, built: Built
) -> None:
    """The server's pre-processing from config.pbtxt against torchvision's Resize(256),
    CenterCrop(224), ToTensor and Normalize in the builder."""
    result = repository_client.infer(CLASSIFIER, [image(CLASSIFIER_IMAGE)])
    assert_close(result.as_numpy("probabilities"), [built.expected[CLASSIFIER]["image"]])


def test_classifier_classification_extension(
    repository_client: grpcclient.InferenceServerClient, built: Built
) -> None:
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=3)]
    result = repository_client.infer(CLASSIFIER, [image(CLASSIFIER_IMAGE)], outputs=outputs)
    top3 = result.as_numpy("probabilities")
    assert (top3.shape, top3.dtype) == ((1, 3), object)
    entries = [entry.decode().split(":") for entry in top3[0]]
    probabilities = built.expected[CLASSIFIER]["image"]
    best = sorted(range(len(probabilities)), key=probabilities.__getitem__, reverse=True)[:3]
    assert [(int(index), label) for _, index, label in entries] == [
        (index, CLASSIFIER_LABELS[index]) for index in best
    ]
    for (value, _, _), index in zip(entries, best, strict=True):
        assert float(value) == pytest.approx(probabilities[index], abs=ATOL)


def test_pair_model(repository_client: grpcclient.InferenceServerClient, built: Built) -> None:
    result = repository_client.infer(PAIR, pair_request())
    expected = built.expected[PAIR]["1"]
    assert_close(result.as_numpy("mixed"), expected["mixed"])
    total = result.as_numpy("total")
    assert total.dtype == np.int64
    assert total.tolist() == expected["total"]


@pytest.mark.parametrize("batch", PROGRAM_BATCHES)
def test_program_batches(
    repository_client: grpcclient.InferenceServerClient, built: Built, batch: int
) -> None:
    result = repository_client.infer(PROGRAM, [tensor("features", program_input(batch))])
    expected = built.expected[PROGRAM][str(batch)]
    assert_close(result.as_numpy("output__0"), expected["output__0"])
    assert_close(result.as_numpy("output__1"), expected["output__1"])


def test_models_answer_side_by_side(
    repository_client: grpcclient.InferenceServerClient, built: Built
) -> None:
    """Requests for all four models in flight at once, each model with its own batcher."""
    requests = {
        LITE0: [image(CAT_JPG.name)],
        CLASSIFIER: [tensor("input__0", classifier_input())],
        PAIR: pair_request(),
        PROGRAM: [tensor("features", program_input(5))],
    }
    answers: queue.Queue[tuple[str, grpcclient.InferResult | None, Exception | None]] = (
        queue.Queue()
    )
    rounds = 4
    for _ in range(rounds):
        for name, inputs in requests.items():
            repository_client.async_infer(
                name, inputs, lambda result, error, name=name: answers.put((name, result, error))
            )
    for _ in range(rounds * len(requests)):
        name, result, error = answers.get(timeout=60)
        assert error is None
        assert result is not None
        if name == LITE0:
            assert int(result.as_numpy("probabilities").argmax()) == CAT_JPG.label
        elif name == CLASSIFIER:
            assert_close(result.as_numpy("probabilities"), built.expected[CLASSIFIER]["tensor"])
        elif name == PAIR:
            assert_close(result.as_numpy("mixed"), built.expected[PAIR]["1"]["mixed"])
        else:
            assert_close(result.as_numpy("output__0"), built.expected[PROGRAM]["5"]["output__0"])


# -- model control ------------------------------------------------------------------------------


def test_unload_and_load(repository_client: grpcclient.InferenceServerClient, built: Built) -> None:
    request = [tensor("features", program_input(1))]
    repository_client.unload_model(PROGRAM)
    try:
        assert repository_client.is_model_ready(PROGRAM) is False
        index = repository_client.get_model_repository_index(as_json=True)["models"]
        assert {"name": PROGRAM, "state": "UNAVAILABLE", "reason": "unloaded"} in index
        with pytest.raises(InferenceServerException) as raised:
            repository_client.infer(PROGRAM, request)
        assert raised.value.status() == "StatusCode.NOT_FOUND"
        # The others serve on.
        assert repository_client.is_model_ready(PAIR) is True
    finally:
        repository_client.load_model(PROGRAM)
    assert repository_client.is_model_ready(PROGRAM) is True
    result = repository_client.infer(PROGRAM, request)
    assert_close(result.as_numpy("output__0"), built.expected[PROGRAM]["1"]["output__0"])


def test_version_2_swaps_in(
    repository_client: grpcclient.InferenceServerClient, built: Built
) -> None:
    """A Triton user's update: a version folder dropped in, then a load request; removing it and
    loading again goes back to version 1."""
    version_2 = built.folder / PAIR / "2"
    version_2.mkdir()
    shutil.copyfile(built.pair_version_2, version_2 / "model.onnx")
    try:
        repository_client.load_model(PAIR)
        result = repository_client.infer(PAIR, pair_request())
        assert result.get_response().model_version == "2"
        assert_close(result.as_numpy("mixed"), built.expected[PAIR]["2"]["mixed"])
        assert result.as_numpy("total").tolist() == built.expected[PAIR]["2"]["total"]
        # version_policy latest 1: version 2 replaces version 1.
        assert repository_client.is_model_ready(PAIR, "2") is True
        assert repository_client.is_model_ready(PAIR, "1") is False
        assert list(repository_client.get_model_metadata(PAIR).versions) == ["2"]
        index = repository_client.get_model_repository_index(as_json=True)["models"]
        assert {"name": PAIR, "version": "2", "state": "READY"} in index
    finally:
        shutil.rmtree(version_2)
        repository_client.load_model(PAIR)
    result = repository_client.infer(PAIR, pair_request())
    assert result.get_response().model_version == "1"
    assert_close(result.as_numpy("mixed"), built.expected[PAIR]["1"]["mixed"])


@pytest.mark.parametrize("config", [None, '{"max_batch_size": 4}'], ids=["files", "and-config"])
def test_load_with_files_is_refused(
    repository_client: grpcclient.InferenceServerClient, built: Built, config: str | None
) -> None:
    """Triton's override files (alone, or with the config Triton requires beside them): the
    server loads only what its repository holds."""
    files = {"file:1/model.onnx": built.pair_version_2.read_bytes()}
    with pytest.raises(InferenceServerException) as raised:
        repository_client.load_model(PAIR, config=config, files=files)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    # The first refused parameter is named; a protobuf map has no order.
    refusals = {
        "parameter 'file:1/model.onnx': model files sent in a load request are refused; "
        "place them in the model repository",
        "parameter 'config': a config sent in a load request is refused; edit the model's "
        "config.pbtxt in the repository",
    }
    assert raised.value.message() in refusals
    result = repository_client.infer(PAIR, pair_request())
    assert result.get_response().model_version == "1"
    assert_close(result.as_numpy("mixed"), built.expected[PAIR]["1"]["mixed"])


def test_load_errors(repository_client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as raised:
        repository_client.load_model("no_such_model")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as raised:
        repository_client.load_model(BROKEN)
    assert raised.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert raised.value.message().endswith(BROKEN_REASON)
    index = repository_client.get_model_repository_index(as_json=True)["models"]
    assert broken_entry(index) == {"name": BROKEN, "state": "UNAVAILABLE", "reason": BROKEN_REASON}
    assert [repository_client.is_model_ready(name) for name in SERVED] == [True] * 4


def test_unloading_an_unknown_model_adds_nothing(
    repository_client: grpcclient.InferenceServerClient,
) -> None:
    """Unloading a model of the repository is idempotent; a name the repository doesn't hold is
    NOT_FOUND and never joins the index. Last in the module: a failure leaves the entry behind."""
    with pytest.raises(InferenceServerException) as raised:
        repository_client.unload_model("never_in_repository")
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    index = repository_client.get_model_repository_index(as_json=True)["models"]
    assert [entry["name"] for entry in index] == [BROKEN, *sorted(SERVED)]
