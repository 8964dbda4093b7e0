"""Mutual TLS and bearer tokens, on real servers: the handshake refuses clients without a
certificate of the right CA; every API (unary calls and streams, reflection, repository control)
refuses a call without an accepted token, health stays open; SIGHUP re-reads the tokens; the
command-line client speaks TLS and tokens. Certificates are made on the fly."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from benchmarks.bench import kserve_request, run_load
from benchmarks.process import ServerProcess
from serve.auth import TokenAuth
from serve.client import AsyncClient, ChannelSecurity, Client
from serve.client.channels import open_channel
from serve.config import ServerConfig
from serve.errors import Unauthenticated
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.certificates import Certificates, make_certificates
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, ROOT, TEST_ARTIFACTS, ServerThread
from tests.rpc_calls import ended
from tests.tiny_models import ADDER_CONFIG, write_model_folder

TOKEN, OTHER_TOKEN = "first-token-7f3a9c", "second-token-2b8e41"
TOKEN_FILE = f"# accepted tokens\n\n  {TOKEN}  \n# the next one is rotated in\n{OTHER_TOKEN}\n"
CAT = CAT_JPG.read_bytes()
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text(TOKEN_FILE)
    return path


@pytest.fixture(scope="module")
def secured(
    lite0_export: object,
    certificates: Certificates,
    token_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    """Mutual TLS and tokens; the repository holds the image model (served from the start) and a
    tiny adder, loaded and unloaded by the repository tests (explicit model control)."""
    repository = tmp_path_factory.mktemp("repository")
    # Linked, not copied (54 MB); a symbolic link would lead outside the repository: refused.
    shutil.copytree(
        TEST_ARTIFACTS / "efficientnet_lite0", repository / "efficientnet_lite0", copy_function=link
    )
    write_model_folder(repository, "adder", ADDER_CONFIG, {1: 1.0})
    config = ServerConfig(
        models=("efficientnet_lite0",),
        model_repository=repository,
        model_control="explicit",
        port=0,
        metrics_port=0,
        tls_cert=certificates.server.cert,
        tls_key=certificates.server.key,
        tls_client_ca=certificates.ca,
        auth_token_file=token_file,
    )
    with ServerThread(config) as running:
        yield running


def link(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system
        shutil.copy2(source, destination)


def security(
    certificates: Certificates, token: str | None = TOKEN, *, client: bool = True
) -> ChannelSecurity:
    pair = certificates.client if client else None
    return ChannelSecurity(
        tls_ca=certificates.ca,
        tls_cert=pair.cert if pair else None,
        tls_key=pair.key if pair else None,
        token=token,
    )


def address(server: ServerThread) -> str:
    return f"localhost:{server.server.port}"


@pytest.fixture(scope="module")
def with_token(secured: ServerThread, certificates: Certificates) -> Iterator[grpc.Channel]:
    with open_channel(address(secured), security(certificates)) as channel:
        yield channel


@pytest.fixture(scope="module")
def without_token(secured: ServerThread, certificates: Certificates) -> Iterator[grpc.Channel]:
    """The right client certificate, and no token."""
    with open_channel(address(secured), security(certificates, None)) as channel:
        yield channel


@pytest.fixture(scope="module")
def wrong_token(secured: ServerThread, certificates: Certificates) -> Iterator[grpc.Channel]:
    with open_channel(address(secured), security(certificates, "not-" + TOKEN)) as channel:
        yield channel


def health(channel: grpc.Channel) -> int:
    request = health_pb2.HealthCheckRequest(service="torchgrpc.v1.Classifier")
    return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=30).status)


# ---- Mutual TLS ----


@pytest.mark.parametrize("client", ["none", "another CA's"])
def test_mutual_tls_refuses_a_client_without_a_certificate_of_its_ca(
    secured: ServerThread, certificates: Certificates, client: str
) -> None:
    pair = certificates.stranger if client == "another CA's" else None
    refused = ChannelSecurity(
        tls_ca=certificates.ca,
        tls_cert=pair.cert if pair else None,
        tls_key=pair.key if pair else None,
        token=TOKEN,
    )
    # Health needs no token: only the handshake can refuse this call.
    with open_channel(address(secured), refused) as channel, pytest.raises(grpc.RpcError) as error:
        health(channel)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_a_certificate_of_its_ca(with_token: grpc.Channel) -> None:
    assert health(with_token) == SERVING
    reply = inference_pb2_grpc.InferenceServerStub(with_token).inference(
        inference_pb2.InferenceRequest(image=[CAT]), timeout=30
    )
    assert list(reply.pred) == [EGYPTIAN_CAT]


# ---- Tokens, on every API ----


def tutorial(channel: grpc.Channel) -> object:
    stub = inference_pb2_grpc.InferenceServerStub(channel)
    return list(stub.inference(inference_pb2.InferenceRequest(image=[CAT]), timeout=30).pred)


def classify(channel: grpc.Channel) -> object:
    request = pb.ClassifyRequest(images=[CAT], top_k=1)
    reply = pb_grpc.ClassifierStub(channel).Classify(request, timeout=30)
    return [item.labels[0].class_id for item in reply.classifications]


def classify_stream(channel: grpc.Channel) -> object:
    items = [pb.ClassifyStreamRequest(id="a", image=CAT, top_k=1)]
    replies = pb_grpc.ClassifierStub(channel).ClassifyStream(iter(items), timeout=30)
    return [(reply.id, reply.classification.labels[0].class_id) for reply in replies]


def list_models(channel: grpc.Channel) -> object:
    reply = pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
    return reply.default_model


def kserve_classes(reply: kserve.ModelInferResponse) -> list[int]:
    probabilities = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(-1, 1000)
    return [int(row) for row in probabilities.argmax(axis=1)]


def model_infer(channel: grpc.Channel) -> object:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    return kserve_classes(stub.ModelInfer(kserve_request("kserve", [CAT]), timeout=30))


def model_stream_infer(channel: grpc.Channel) -> object:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    replies = stub.ModelStreamInfer(iter([kserve_request("kserve", [CAT])]), timeout=30)
    return [(r.error_message, kserve_classes(r.infer_response)) for r in replies]


def server_live(channel: grpc.Channel) -> object:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerLive(kserve.ServerLiveRequest(), timeout=30).live


def reflection(channel: grpc.Channel) -> object:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([request]), timeout=30)
    return "torchgrpc.v1.Classifier" in {
        s.name for s in next(replies).list_services_response.service
    }


# Each call, and what it answers with an accepted token.
CALLS: dict[str, tuple[Callable[[grpc.Channel], object], object]] = {
    "tutorial": (tutorial, [EGYPTIAN_CAT]),
    "Classify": (classify, [EGYPTIAN_CAT]),
    "ClassifyStream": (classify_stream, [("a", EGYPTIAN_CAT)]),
    "ListModels": (list_models, "efficientnet_lite0"),
    "ModelInfer": (model_infer, [EGYPTIAN_CAT]),
    "ModelStreamInfer": (model_stream_infer, [("", [EGYPTIAN_CAT])]),
    "ServerLive": (server_live, True),
    "reflection": (reflection, True),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_an_accepted_token_is_served(with_token: grpc.Channel, name: str) -> None:
    call, expected = CALLS[name]
    assert call(with_token) == expected


@pytest.mark.parametrize("name", list(CALLS))
def test_a_call_without_a_token_is_unauthenticated(without_token: grpc.Channel, name: str) -> None:
    call, _ = CALLS[name]
    with pytest.raises(grpc.RpcError) as error:
        call(without_token)
    assert error.value.code() == UNAUTHENTICATED
    assert error.value.details() == (
        "this server needs a token: send 'authorization: Bearer <token>' metadata"
    )


@pytest.mark.parametrize("name", list(CALLS))
def test_a_wrong_token_is_unauthenticated(wrong_token: grpc.Channel, name: str) -> None:
    call, _ = CALLS[name]
    with pytest.raises(grpc.RpcError) as error:
        call(wrong_token)
    assert error.value.code() == UNAUTHENTICATED
    assert error.value.details() == "the token is not accepted by this server"


def test_every_token_of_the_file_is_accepted(
    secured: ServerThread, certificates: Certificates
) -> None:
    with open_channel(address(secured), security(certificates, OTHER_TOKEN)) as channel:
        assert tutorial(channel) == [EGYPTIAN_CAT]


@pytest.mark.parametrize(
    "value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", TOKEN, f"Token {TOKEN}"]
)
def test_an_authorization_that_is_not_a_bearer_token_is_unauthenticated(
    without_token: grpc.Channel, value: str
) -> None:
    stub = pb_grpc.ClassifierStub(without_token)
    with pytest.raises(grpc.RpcError) as error:
        stub.ListModels(pb.ListModelsRequest(), timeout=30, metadata=[("authorization", value)])
    assert error.value.code() == UNAUTHENTICATED
    assert error.value.details() == "the authorization metadata is not 'Bearer <token>'"


def test_the_bearer_scheme_is_case_insensitive(without_token: grpc.Channel) -> None:
    stub = pb_grpc.ClassifierStub(without_token)
    metadata = [("authorization", f"bearer {TOKEN}")]
    reply = stub.ListModels(pb.ListModelsRequest(), timeout=30, metadata=metadata)
    assert reply.default_model == "efficientnet_lite0"


@pytest.mark.parametrize(
    "method",
    [
        "/InferenceServer/inference",
        "/torchgrpc.v1.Classifier/Classify",
        "/inference.GRPCInferenceService/ModelInfer",
    ],
)
def test_a_refused_call_is_not_even_decoded(without_token: grpc.Channel, method: str) -> None:
    """Not protobuf at all: with a token this is INVALID_ARGUMENT; without one it is never read."""
    with pytest.raises(grpc.RpcError) as error:
        without_token.unary_unary(method)(b"\xff\xff\xff\xff", timeout=30)
    assert error.value.code() == UNAUTHENTICATED


def test_a_server_streaming_client_is_refused_too(without_token: grpc.Channel) -> None:
    """The refusal answers any shape of call, whatever the method's own."""
    with pytest.raises(grpc.RpcError) as error:
        list(without_token.unary_stream("/torchgrpc.v1.Classifier/ListModels")(b"", timeout=30))
    assert error.value.code() == UNAUTHENTICATED


def test_health_checks_need_no_token_but_watches_do(
    with_token: grpc.Channel, without_token: grpc.Channel
) -> None:
    assert health(without_token) == SERVING
    # A Watch stream lasts as long as its client likes: without a token, anyone could fill the
    # server's concurrent calls with them.
    request = health_pb2.HealthCheckRequest(service="")
    refused = health_pb2_grpc.HealthStub(without_token).Watch(request, timeout=30)
    with pytest.raises(grpc.RpcError) as error:
        next(refused)
    assert error.value.code() == UNAUTHENTICATED
    watch = health_pb2_grpc.HealthStub(with_token).Watch(request, timeout=30)
    assert next(watch).status == SERVING  # a server stream
    watch.cancel()


def test_repository_load_and_unload_need_a_token(
    with_token: grpc.Channel, without_token: grpc.Channel
) -> None:
    def adder_state(channel: grpc.Channel) -> str:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        models = stub.RepositoryIndex(kserve.RepositoryIndexRequest(), timeout=30).models
        return next(m.state for m in models if m.name == "adder")

    refused, allowed = (
        kserve_grpc.GRPCInferenceServiceStub(c) for c in (without_token, with_token)
    )
    load = kserve.RepositoryModelLoadRequest(model_name="adder")
    unload = kserve.RepositoryModelUnloadRequest(model_name="adder")
    with pytest.raises(grpc.RpcError) as error:
        refused.RepositoryModelLoad(load, timeout=60)
    assert error.value.code() == UNAUTHENTICATED
    assert adder_state(with_token) != "READY"
    allowed.RepositoryModelLoad(load, timeout=60)
    assert adder_state(with_token) == "READY"
    with pytest.raises(grpc.RpcError) as error:
        refused.RepositoryModelUnload(unload, timeout=60)
    assert error.value.code() == UNAUTHENTICATED
    assert adder_state(with_token) == "READY"
    allowed.RepositoryModelUnload(unload, timeout=60)
    assert adder_state(with_token) == "UNAVAILABLE"


# ---- The Python clients ----


def test_the_clients_send_the_token_and_map_a_refusal(
    secured: ServerThread, certificates: Certificates
) -> None:
    with Client(address(secured), security=security(certificates)) as client:
        assert client.classify([CAT], top_k=1)[0][0].class_id == EGYPTIAN_CAT
    with (
        Client(address(secured), security=security(certificates, None)) as client,
        pytest.raises(Unauthenticated, match="this server needs a token"),
    ):
        client.classify([CAT])


async def test_the_asyncio_client_sends_the_token(
    secured: ServerThread, certificates: Certificates
) -> None:
    async with AsyncClient(address(secured), security=security(certificates)) as client:
        assert (await client.classify([CAT], top_k=1))[0][0].class_id == EGYPTIAN_CAT
    async with AsyncClient(address(secured), security=security(certificates, "wrong")) as client:
        with pytest.raises(Unauthenticated, match="not accepted"):
            await client.classify([CAT])


async def test_the_load_generator_sends_the_token(
    secured: ServerThread, certificates: Certificates
) -> None:
    for token, errors in ((TOKEN, 0), (None, 2)):
        result = await run_load(
            address(secured), "classify", [CAT], 1, requests=2, progress=False, warm_up=0,
            security=security(certificates, token),
        )  # fmt: skip
        assert (result.requests, result.errors) == (2 - errors, errors)


def test_a_token_is_not_sent_in_clear_text_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="only over TLS or to a loopback address"):
        open_channel("192.0.2.1:50052", ChannelSecurity(token=TOKEN))
    for loopback in ("localhost:50052", "127.0.0.1:50052", "[::1]:50052"):
        open_channel(loopback, ChannelSecurity(token=TOKEN)).close()


def cli(*arguments: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TORCHGRPC_TOKEN"}
    if token is not None:
        environment["TORCHGRPC_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "serve.client", str(CAT_JPG), "--top-k", "1", *arguments],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=environment,
    )  # fmt: skip


def test_the_command_line_client_speaks_tls_and_tokens(
    secured: ServerThread, certificates: Certificates, token_file: Path
) -> None:
    client = certificates.client
    tls = ["--server", address(secured), "--tls-ca", str(certificates.ca),
           "--tls-cert", str(client.cert), "--tls-key", str(client.key)]  # fmt: skip
    for done in (cli(*tls, "--token-file", str(token_file)), cli(*tls, token=TOKEN)):
        assert done.returncode == 0, done.stderr
        assert f"(class {EGYPTIAN_CAT})" in done.stdout
    refused = cli(*tls)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "error: this server needs a token: send 'authorization: Bearer <token>' metadata"
    )


# ---- Start-up refusals ----


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"token file .*tokens\.txt: No such file or directory"),
        ("# only a comment\n\n", r"token file .*tokens\.txt holds no token"),
        ("two words\n", r"token file .*tokens\.txt, line 1: a token is one word of ASCII"),
    ],
)
def test_an_unusable_token_file_stops_start_up(
    tmp_path: Path, content: str | None, message: str
) -> None:
    tokens = tmp_path / "tokens.txt"
    if content is not None:
        tokens.write_text(content)
    config = ServerConfig(model_repository=tmp_path, port=0, metrics_port=0, auth_token_file=tokens)
    with pytest.raises(OSError, match=message), ServerThread(config):
        pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"TLS: --tls-client-ca .*ca\.pem: No such file or directory"),
        ("not a certificate\n", r"TLS: --tls-client-ca .*ca\.pem holds no PEM CA certificate"),
    ],
)
def test_an_unusable_client_ca_stops_start_up(
    tmp_path: Path, certificates: Certificates, content: str | None, message: str
) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    config = ServerConfig(
        model_repository=tmp_path, port=0, metrics_port=0, tls_cert=certificates.server.cert,
        tls_key=certificates.server.key, tls_client_ca=ca,
    )  # fmt: skip
    with pytest.raises(OSError, match=message), ServerThread(config):
        pass


def test_an_empty_token_file_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "serve", "--model-repository", str(tmp_path), "--port", "0",
         "--metrics-port", "0", "--auth-token-file", str(tokens)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(f"token file {tokens} holds no token (one per line; "
                                        "'#' starts a comment)")  # fmt: skip


# ---- SIGHUP ----


def answer(address: str, token: str) -> grpc.StatusCode:
    """The status of a call with ``token``, over plaintext to loopback."""
    with open_channel(address, ChannelSecurity(token=token)) as channel:
        try:
            pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"not seen in 30 s: {what}"
        time.sleep(0.05)


def test_sighup_rereads_the_tokens_and_keeps_them_when_the_file_is_unusable(
    tmp_path: Path,
) -> None:
    tokens, repository = tmp_path / "tokens.txt", tmp_path / "models"
    tokens.write_text("old-token\n")
    repository.mkdir()
    arguments = ["--model-repository", str(repository), "--model-control", "explicit",
                 "--auth-token-file", str(tokens), "--host", "0.0.0.0"]  # fmt: skip
    with ServerProcess(arguments) as server:
        assert "without TLS: the bearer tokens cross the network in clear text" in server.output()
        assert answer(server.address, "old-token") == grpc.StatusCode.OK
        assert answer(server.address, "new-token") == UNAUTHENTICATED

        tokens.write_text("# emptied by mistake\n")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "still accepting the 1 token(s) read before" in server.output(), "kept")
        assert answer(server.address, "old-token") == grpc.StatusCode.OK

        tokens.write_text("new-token\n")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "re-read: 1 token(s) accepted" in server.output(), "re-read")
        assert answer(server.address, "new-token") == grpc.StatusCode.OK
        assert answer(server.address, "old-token") == UNAUTHENTICATED
        assert server.running()


def test_sighup_to_the_parent_of_workers_reaches_every_worker(
    tmp_path: Path, lite0_export: object
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("old-token\n")
    arguments = ["--model-repository", str(TEST_ARTIFACTS), "--models", "efficientnet_lite0",
                 "--workers", "2", "--auth-token-file", str(tokens)]  # fmt: skip
    with ServerProcess(arguments) as server:
        tokens.write_text("new-token\n")
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: server.output().count("re-read: 1 token(s) accepted") == 2, "both")
        # Each call on a connection of its own, which the kernel gives either worker.
        assert {answer(server.address, "new-token") for _ in range(6)} == {grpc.StatusCode.OK}
        assert server.running()


# ---- The interceptor, on every shape of method ----


async def test_a_refused_call_of_any_shape_is_never_read_nor_handled(tmp_path: Path) -> None:
    """A bare gRPC server with the interceptor and one method of each shape, whose deserializer
    and handlers note each use: a refused call uses neither, even a stream left open."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"{TOKEN}\n")
    used: list[str] = []

    def read(data: bytes) -> bytes:
        used.append("decoded")
        return data

    async def unary(request: bytes, context: object) -> bytes:
        used.append("handled")
        return request

    async def streamed(request: bytes, context: object) -> AsyncIterator[bytes]:
        used.append("handled")
        yield request

    async def gathered(requests: AsyncIterator[bytes], context: object) -> bytes:
        used.append("handled")
        return b"".join([r async for r in requests])

    async def echoed(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        used.append("handled")
        async for request in requests:
            yield request

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary, read),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(streamed, read),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(gathered, read),
        "StreamStream": grpc.stream_stream_rpc_method_handler(echoed, read),
    }
    server = grpc.aio.server(interceptors=[TokenAuth(tokens)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Shapes", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for metadata in ((), (("authorization", "Bearer wrong"),)):
                codes = await calls_of_each_shape(channel, metadata, hold_streams_open=True)
                assert codes == [UNAUTHENTICATED] * 4
                assert used == []
            accepted = (("authorization", f"Bearer {TOKEN}"),)
            codes = await calls_of_each_shape(channel, accepted, hold_streams_open=False)
            assert codes == [grpc.StatusCode.OK] * 4
            assert used.count("handled") == 4
    finally:
        await server.stop(None)


async def calls_of_each_shape(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], *, hold_streams_open: bool
) -> list[grpc.StatusCode]:
    """The status of one call of each shape; with ``hold_streams_open`` the client streams send
    nothing and stay open until every call has ended (a refusal that waited for a first message
    would never come)."""
    done = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        if hold_streams_open:
            await done.wait()
            return
        yield b"x"

    calls: list[Any] = [
        channel.unary_unary("/t.Shapes/UnaryUnary")(b"x", metadata=metadata, timeout=10),
        channel.unary_stream("/t.Shapes/UnaryStream")(b"x", metadata=metadata, timeout=10),
        channel.stream_unary("/t.Shapes/StreamUnary")(requests(), metadata=metadata, timeout=10),
        channel.stream_stream("/t.Shapes/StreamStream")(requests(), metadata=metadata, timeout=10),
    ]
    try:
        return [(await ended(call))[1] for call in calls]
    finally:
        done.set()
