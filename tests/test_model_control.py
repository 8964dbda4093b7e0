"""The repository served: broken models beside healthy ones, versions, explicit load and unload,
polling, and a version swap under load that fails no request. Real servers, real ONNX models."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from serve.config import ServerConfig
from serve.errors import ModelNotFound
from serve.pb.kserve import grpc_service_pb2 as pb
from serve.pb.kserve import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import ServerThread
from tests.tiny_models import ADDER_CONFIG, write_adder, write_model_folder

ONES = np.ones((2, 4), dtype=np.float32)


def adder_request(name: str = "adder", version: str = "") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor
    return pb.ModelInferRequest(
        model_name=name,
        model_version=version,
        inputs=[
            tensor(name="a", datatype="FP32", shape=[2, 4]),
            tensor(name="b", datatype="FP32", shape=[2, 4]),
        ],
        raw_input_contents=[ONES.tobytes(), ONES.tobytes()],
    )


def offset_of(reply: pb.ModelInferResponse) -> float:
    """Which version answered: sum = 1 + 1 + offset."""
    index = [o.name for o in reply.outputs].index("sum")
    total = np.frombuffer(reply.raw_output_contents[index], dtype=np.float32)
    return float(total[0]) - 2.0


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "models"
    repo.mkdir()
    return repo


def serving(repository: Path, **settings: object) -> ServerThread:
    config = ServerConfig(model_repository=repository, port=0, instances=1, **settings)  # type: ignore[arg-type]
    return ServerThread(config)


@pytest.fixture
def connect() -> Iterator[Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]]:
    channels: list[grpc.Channel] = []

    def stub(server: ServerThread) -> pb_grpc.GRPCInferenceServiceStub:
        channel = grpc.insecure_channel(server.address)
        channels.append(channel)
        return pb_grpc.GRPCInferenceServiceStub(channel)

    yield stub
    for channel in channels:
        channel.close()


def index(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, tuple[str, str, str]]:
    models = stub.RepositoryIndex(pb.RepositoryIndexRequest()).models
    return {f"{m.name}/{m.version}": (m.state, m.reason) for m in models}  # type: ignore[misc]


def states(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, str]:
    return {m.name: m.state for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


def reasons(stub: pb_grpc.GRPCInferenceServiceStub) -> dict[str, str]:
    return {m.name: m.reason for m in stub.RepositoryIndex(pb.RepositoryIndexRequest()).models}


def health(server: ServerThread, service: str) -> int:
    with grpc.insecure_channel(server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
    return int(reply.status)


def test_a_broken_model_never_takes_down_the_healthy_ones(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    broken = write_model_folder(repository, "broken", None, {})
    (broken / "1").mkdir()
    (broken / "1" / "model.onnx").write_bytes(b"this is not an ONNX file")
    write_model_folder(repository, "bad_config", "max_batch_size: -1\n", {1: 1.0})
    write_model_folder(repository, "wrong_input", ADDER_CONFIG.replace('"b"', '"c"'), {1: 1.0})
    write_model_folder(repository, "bad name", ADDER_CONFIG, {1: 1.0})
    with serving(repository) as server:
        stub = connect(server)
        assert offset_of(stub.ModelInfer(adder_request())) == 1.0
        found = states(stub)
        assert found == {
            "'bad name'": "UNAVAILABLE",
            "adder": "READY",
            "bad_config": "UNAVAILABLE",
            "broken": "UNAVAILABLE",
            "wrong_input": "UNAVAILABLE",
        }
        why = reasons(stub)
        assert why["bad_config"].endswith(
            "bad_config/config.pbtxt: max_batch_size: must be >= 0, not -1"
        )
        assert "model.onnx" in why["broken"]
        assert "'c'" in why["wrong_input"]
        assert why["'bad name'"] == (
            "model name has characters other than ASCII letters, digits, '_', '.' and '-'"
        )
        assert not stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="adder", version="1")).ready
        serving_status = health_pb2.HealthCheckResponse.SERVING
        assert health(server, "model/adder") == serving_status
        assert health(server, "model/broken") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(adder_request("broken"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert "model.onnx" in str(refused.value.details())
        with pytest.raises(grpc.RpcError) as control:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="adder"))
        assert control.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "--model-control explicit" in str(control.value.details())


def test_versions_follow_the_version_policy(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    policy = ADDER_CONFIG + "version_policy { latest { num_versions: 2 } }\n"
    write_model_folder(repository, "adder", policy, {1: 1.0, 2: 2.0, 3: 3.0})
    with serving(repository) as server:
        stub = connect(server)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="adder"))
        assert list(metadata.versions) == ["3", "2"]
        assert offset_of(stub.ModelInfer(adder_request())) == 3.0
        assert offset_of(stub.ModelInfer(adder_request(version="2"))) == 2.0
        with pytest.raises(grpc.RpcError) as missing:
            stub.ModelInfer(adder_request(version="1"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert "versions: 3, 2" in str(missing.value.details())
        assert sorted(index(stub)) == ["adder/2", "adder/3"]
        statistics = stub.ModelStatistics(pb.ModelStatisticsRequest(name="adder"))
        assert sorted(s.version for s in statistics.model_stats) == ["2", "3"]


HOSTILE_NAMES = [
    "..",
    "../outside",
    "/etc",
    "a/b",
    "..\\windows",
    ".hidden",
    "-rf",
    "nul\0byte",
    "line\nbreak",
    "x" * 300,
    "café",
    "",
]


def test_explicit_control_loads_unloads_and_refuses(
    repository: Path,
    tmp_path: Path,
    connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub],
) -> None:
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    write_model_folder(repository, "second", ADDER_CONFIG, {1: 5.0})
    outside = write_model_folder(tmp_path, "outside", ADDER_CONFIG, {1: 9.0})
    (repository / "escape").symlink_to(outside)
    with serving(repository, model_control="explicit", models=("adder",)) as server:
        stub = connect(server)
        assert states(stub) == {
            "adder": "READY",
            "escape": "UNAVAILABLE",
            "second": "UNAVAILABLE",
        }
        stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="second"))
        assert offset_of(stub.ModelInfer(adder_request("second"))) == 5.0
        assert health(server, "model/second") == health_pb2.HealthCheckResponse.SERVING
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="second"))
        assert reasons(stub)["second"] == "unloaded"
        assert health(server, "model/second") == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as gone:
            stub.ModelInfer(adder_request("second"))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

        def refused(request: pb.RepositoryModelLoadRequest) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as error:
                stub.RepositoryModelLoad(request)
            return error.value

        escape = refused(pb.RepositoryModelLoadRequest(model_name="escape"))
        assert "outside the repository" in str(escape.details())
        for name in HOSTILE_NAMES:
            error = refused(pb.RepositoryModelLoadRequest(model_name=name))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        missing = refused(pb.RepositoryModelLoadRequest(model_name="nothing_here"))
        assert missing.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unknown:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="nothing_here"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        # Unloading a model of the repository that isn't loaded changes nothing.
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="escape"))
        parameter = pb.ModelRepositoryParameter
        payload = refused(
            pb.RepositoryModelLoadRequest(
                model_name="adder",
                parameters={"file:1/model.onnx": parameter(bytes_param=b"\0" * 16)},
            )
        )
        assert payload.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refused" in str(payload.details())
        override = refused(
            pb.RepositoryModelLoadRequest(
                model_name="adder", parameters={"config": parameter(string_param="{}")}
            )
        )
        assert override.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert offset_of(stub.ModelInfer(adder_request())) == 1.0
        assert sorted(states(stub)) == ["adder", "escape", "second"]


def test_a_version_swap_under_load_fails_no_request(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    with serving(repository, model_control="explicit") as server:
        control = connect(server)
        stop = threading.Event()
        failures: list[str] = []
        seen: list[list[float]] = [[] for _ in range(4)]

        def client(answers: list[float]) -> None:
            stub = connect(server)
            while not stop.is_set():
                try:
                    answers.append(offset_of(stub.ModelInfer(adder_request(), timeout=30)))
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")

        clients = [threading.Thread(target=client, args=(answers,)) for answers in seen]
        for thread in clients:
            thread.start()
        try:
            for version in (2, 3):
                time.sleep(0.5)
                write_adder(repository / "adder" / str(version) / "model.onnx", float(version))
                control.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="adder"))
            time.sleep(0.5)
        finally:
            stop.set()
            for thread in clients:
                thread.join()
    assert failures == []
    for answers in seen:
        # Every client saw the versions in order: no answer from an old version after a new one.
        assert answers == sorted(answers)
        assert answers[-1] == 3.0
    assert sum(len(a) for a in seen) > 50


def test_poll_reloads_what_changed_and_follows_the_folders(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    with serving(repository, model_control="poll", repository_poll_seconds=0.2) as server:
        stub = connect(server)
        assert offset_of(stub.ModelInfer(adder_request())) == 1.0
        write_adder(repository / "adder" / "2" / "model.onnx", 2.0)
        write_model_folder(repository, "newcomer", ADDER_CONFIG, {1: 7.0})
        wait_for(lambda: offset_of(stub.ModelInfer(adder_request())) == 2.0)
        wait_for(lambda: states(stub).get("newcomer") == "READY")
        assert offset_of(stub.ModelInfer(adder_request("newcomer"))) == 7.0
        # A broken edit keeps the served version and reports why.
        (repository / "adder" / "config.pbtxt").write_text("max_batch_size: oops\n")
        wait_for(lambda: "reload failed" in reasons(stub)["adder"])
        assert offset_of(stub.ModelInfer(adder_request())) == 2.0
        shutil.rmtree(repository / "newcomer")
        wait_for(lambda: "newcomer" not in states(stub))
        assert not stub.ModelReady(pb.ModelReadyRequest(name="newcomer")).ready


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except grpc.RpcError:
            pass
        time.sleep(0.1)
    raise AssertionError("the condition did not hold in time")


def test_a_model_without_batch_axis_runs_each_request_alone(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    """max_batch_size 0 (Triton's "no batching"): the config's dims are the whole shape, and no
    two requests are ever concatenated."""
    unbatched = ADDER_CONFIG.replace("max_batch_size: 8", "max_batch_size: 0").replace(
        "dims: [ 4 ]", "dims: [ 2, 4 ]"
    )
    write_model_folder(repository, "adder", unbatched, {1: 1.0})
    with serving(repository) as server:
        stub = connect(server)
        config = stub.ModelConfig(pb.ModelConfigRequest(name="adder")).config
        assert config.max_batch_size == 0
        assert [list(i.dims) for i in config.input] == [[2, 4], [2, 4]]
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="adder"))
        assert [list(i.shape) for i in metadata.inputs] == [[2, 4], [2, 4]]
        assert offset_of(stub.ModelInfer(adder_request())) == 1.0
        wrong = adder_request()
        del wrong.inputs[:]
        tensor = pb.ModelInferRequest.InferInputTensor
        wrong.inputs.extend([tensor(name=n, datatype="FP32", shape=[1, 2, 4]) for n in ("a", "b")])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(wrong)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected [2, 4]" in str(refused.value.details())


def test_start_up_refuses_a_model_name_the_repository_lacks(repository: Path) -> None:
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    refused = pytest.raises(ModelNotFound, match=r"--models names 'addr', not in the repository")
    with refused, serving(repository, models=("addr", "adder")):
        pass


def test_a_load_outlives_a_client_that_gives_up(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    """The load runs on after the caller's deadline: the model ends READY, never stuck LOADING;
    a server that started with no model takes the first one loaded as its default."""
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    with serving(repository, model_control="explicit", models=()) as server:
        stub = connect(server)
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="adder"))
        with pytest.raises(grpc.RpcError) as gave_up:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name="adder"), timeout=0.001
            )
        assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: states(stub).get("adder") == "READY")
        assert offset_of(stub.ModelInfer(adder_request(name=""))) == 1.0


def test_an_image_model_with_no_name_left_for_its_images_is_refused(
    repository: Path, connect: Callable[[ServerThread], pb_grpc.GRPCInferenceServiceStub]
) -> None:
    names = ("image", "encoded_image", "image_bytes")
    shape = ["N", 3, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Sum", list(names), ["total"])],
        "crowded",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in names],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (repository / "crowded" / "1").mkdir(parents=True)
    onnx.save(model, str(repository / "crowded" / "1" / "model.onnx"))
    (repository / "crowded" / "config.pbtxt").write_text(
        'parameters { key: "image_input" value { string_value: "image" } }\n'
    )
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    with serving(repository) as server:
        stub = connect(server)
        assert "every name the encoded images could have" in reasons(stub)["crowded"]
        assert states(stub)["adder"] == "READY"
        with pytest.raises(grpc.RpcError) as huge:
            stub.ModelInfer(adder_request(version="9" * 5000))
        assert huge.value.code() == grpc.StatusCode.NOT_FOUND
