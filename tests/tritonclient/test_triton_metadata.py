"""Health, metadata, model configuration and the repository, as tritonclient reads them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import tritonclient.grpc as grpcclient
from lite0 import MODEL
from tritonclient.utils import InferenceServerException


def test_server_is_live_and_ready(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_model_readiness(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL) is True
    assert client.is_model_ready(MODEL, "1") is True
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready(MODEL, "2") is False


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "torchgrpc"
    assert metadata.version
    assert list(metadata.extensions) == [
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ]


def test_model_metadata(client: grpcclient.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata.name == MODEL
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    inputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs]
    assert inputs == [("image", "BYTES", [-1, 1]), ("input", "FP32", [-1, 3, 224, 224])]
    outputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs]
    assert outputs == [("probabilities", "FP32", [-1, 1000])]
    # As JSON, int64 shapes become strings (protobuf's JSON mapping).
    as_json = client.get_model_metadata(MODEL, "1", as_json=True)
    assert as_json["inputs"][1]["shape"] == ["-1", "3", "224", "224"]


def test_model_config(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    # Either input alone: both optional; dims leave out the batch axis.
    inputs = [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input]
    assert inputs == [
        ("image", grpcclient.model_config_pb2.TYPE_STRING, [1], True),
        ("input", grpcclient.model_config_pb2.TYPE_FP32, [3, 224, 224], True),
    ]
    outputs = [(o.name, o.data_type, list(o.dims)) for o in config.output]
    assert outputs == [("probabilities", grpcclient.model_config_pb2.TYPE_FP32, [1000])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 128
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, grpcclient.model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert config.version_policy.latest.num_versions == 1
    assert config.model_transaction_policy.decoupled is False


def test_repository_index(client: grpcclient.InferenceServerClient) -> None:
    """The served model, and every other model of the repository as not loaded (the session's
    server loads only MODEL)."""
    models = client.get_model_repository_index(as_json=True)["models"]
    assert [m for m in models if m.get("state") == "READY"] == [
        {"name": MODEL, "version": "1", "state": "READY"}
    ]
    others = [m for m in models if m["name"] != MODEL]
    assert all(
        m == {"name": m["name"], "state": "UNAVAILABLE", "reason": "not loaded"} for m in others
    )


UNKNOWN = "model 'no_such_model' is not served here (served: efficientnet_lite0)"
NO_VERSION_2 = "model 'efficientnet_lite0' has no version '2' (versions: 1)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.get_model_metadata("no_such_model"), UNKNOWN),
        (lambda c: c.get_model_config("no_such_model"), UNKNOWN),
        (lambda c: c.get_inference_statistics("no_such_model"), UNKNOWN),
        (lambda c: c.get_model_metadata(MODEL, "2"), NO_VERSION_2),
        (lambda c: c.get_model_config(MODEL, "2"), NO_VERSION_2),
    ],
    ids=["metadata", "config", "statistics", "metadata-version-2", "config-version-2"],
)
def test_unknown_model_is_not_found(
    client: grpcclient.InferenceServerClient,
    call: Callable[[grpcclient.InferenceServerClient], object],
    message: str,
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call(client)
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    assert raised.value.message() == message


def test_model_control_needs_explicit_mode(client: grpcclient.InferenceServerClient) -> None:
    for rpc, call in [
        ("RepositoryModelLoad", lambda: client.load_model(MODEL)),
        ("RepositoryModelUnload", lambda: client.unload_model(MODEL)),
    ]:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert raised.value.message() == (
            f"{rpc}: model control is 'none' on this server; start it with --model-control explicit"
        )
