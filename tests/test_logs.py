"""Logs a machine can read: JSON lines from a real server process, request ids returned in the
trailers (after an error status too), and one access line per RPC of each API, unary and
streamed, with the status it ended with."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.config import ServerConfig
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from serve.services.request_log import MAX_ID_LENGTH, RequestLog
from tests.conftest import ROOT, TEST_ARTIFACTS, ServerThread, config_with
from tests.rpc_calls import ended
from tests.test_metrics import CAT, LITE0, NOT_AN_IMAGE, RESNET, kserve_request

OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT
TIMEOUT = 30


class AccessLines(logging.Handler):
    """The access lines a server writes. A call's line is written as its handler ends, which
    for an error status is after the status went out: a test waits for the line it needs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._records: list[logging.LogRecord] = []
        self._added = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._added:
            self._records.append(record)
            self._added.notify_all()

    def of(self, request_id: str) -> logging.LogRecord:
        """The one line of the call with ``request_id``, once written."""

        def lines() -> list[logging.LogRecord]:
            return [r for r in self._records if getattr(r, "request_id", None) == request_id]

        with self._added:
            assert self._added.wait_for(lines, timeout=TIMEOUT), f"no access line {request_id}"
            (line,) = lines()
            return line


@pytest.fixture(scope="module")
def access_lines() -> Iterator[AccessLines]:
    logger = logging.getLogger("serve.access")
    lines, level = AccessLines(), logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def logged_server(base_config: ServerConfig) -> Iterator[ServerThread]:
    with ServerThread(config_with(base_config, access_log=True)) as running:
        yield running


@pytest.fixture(scope="module")
def logged_channel(logged_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(logged_server.address) as opened:
        yield opened


# Calls of every API, each (channel, metadata) -> its trailing metadata, and the status its
# client got.
Call = Callable[[grpc.Channel, list[tuple[str, str]]], tuple[Any, grpc.StatusCode]]


def unary(send: Callable[[], Any]) -> tuple[Any, grpc.StatusCode]:
    """Sends a unary call with ``send`` (a stub's ``with_call``)."""
    try:
        _, call = send()
    except grpc.RpcError as error:
        return error.trailing_metadata(), error.code()
    return call.trailing_metadata(), OK


def tutorial(image: bytes) -> Call:
    def call(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
        stub = inference_pb2_grpc.InferenceServerStub(channel)
        request = inference_pb2.InferenceRequest(image=[image])
        return unary(lambda: stub.inference.with_call(request, metadata=metadata, timeout=30))

    return call


def classify(model: str) -> Call:
    def call(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
        stub = pb_grpc.ClassifierStub(channel)
        request = pb.ClassifyRequest(images=[CAT], model=model)
        return unary(lambda: stub.Classify.with_call(request, metadata=metadata, timeout=30))

    return call


def model_infer(model: str) -> Call:
    def call(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        request = kserve_request(CAT, model)
        return unary(lambda: stub.ModelInfer.with_call(request, metadata=metadata, timeout=30))

    return call


def server_live(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
    stub = kserve_grpc.GRPCInferenceServiceStub(channel)
    request = kserve.ServerLiveRequest()
    return unary(lambda: stub.ServerLive.with_call(request, metadata=metadata, timeout=30))


def health_check(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    return unary(lambda: stub.Check.with_call(request, metadata=metadata, timeout=30))


def streamed(responses: Any) -> tuple[Any, grpc.StatusCode]:
    try:
        for _ in responses:
            pass
    except grpc.RpcError as error:
        return error.trailing_metadata(), error.code()
    return responses.trailing_metadata(), OK


def classify_stream(*items: tuple[bytes, str]) -> Call:
    def call(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
        requests = [
            pb.ClassifyStreamRequest(id=str(i), image=image, model=model)
            for i, (image, model) in enumerate(items)
        ]
        stub = pb_grpc.ClassifierStub(channel)
        return streamed(stub.ClassifyStream(iter(requests), metadata=metadata, timeout=30))

    return call


def model_stream_infer(*images: bytes, end_on_error: bool = False) -> Call:
    def call(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> tuple[Any, Any]:
        if end_on_error:  # Triton's opt-in: a failure ends the stream with its status
            metadata = [*metadata, ("triton_grpc_error", "true")]
        requests = [kserve_request(image) for image in images]
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        return streamed(stub.ModelStreamInfer(iter(requests), metadata=metadata, timeout=30))

    return call


# (call, what its access line says: method, status, api, and model, version and items when the
# line has them (None: it has not)).
CALLS = {
    "tutorial": (tutorial(CAT), "/InferenceServer/inference", OK, "tutorial", "", "", None),
    "tutorial-bad-image": (
        tutorial(NOT_AN_IMAGE), "/InferenceServer/inference", INVALID, "tutorial", "", "", None,
    ),
    "classify": (
        classify(LITE0), "/torchgrpc.v1.Classifier/Classify", OK, "classifier", LITE0, "", None,
    ),
    "classify-unknown-model": (
        classify("no-such-model"), "/torchgrpc.v1.Classifier/Classify",
        grpc.StatusCode.NOT_FOUND, "classifier", "no-such-model", "", None,
    ),
    "classify-stream": (
        classify_stream((CAT, LITE0), (NOT_AN_IMAGE, LITE0), (CAT, RESNET)),
        "/torchgrpc.v1.Classifier/ClassifyStream", OK, "classifier", f"{LITE0},{RESNET}", "", 3,
    ),
    "model-infer": (
        model_infer(LITE0), "/inference.GRPCInferenceService/ModelInfer", OK, "kserve", LITE0,
        "", None,
    ),
    "model-stream-infer": (
        model_stream_infer(CAT, NOT_AN_IMAGE), "/inference.GRPCInferenceService/ModelStreamInfer",
        OK, "kserve", LITE0, "", 2,
    ),
    "model-stream-infer-ended-by-error": (
        model_stream_infer(NOT_AN_IMAGE, end_on_error=True),
        "/inference.GRPCInferenceService/ModelStreamInfer", INVALID, "kserve", LITE0, "", 1,
    ),
    "server-live": (
        server_live, "/inference.GRPCInferenceService/ServerLive", OK, "kserve", None, None, None,
    ),
    "health": (health_check, "/grpc.health.v1.Health/Check", OK, "other", None, None, None),
}  # fmt: skip


@pytest.mark.parametrize("name", CALLS)
def test_each_call_has_an_access_line(
    logged_channel: grpc.Channel, access_lines: AccessLines, name: str
) -> None:
    call, method, code, api, model, version, items = CALLS[name]
    request_id = f"test-{name}"
    started = time.perf_counter()
    trailers, status = call(logged_channel, [("x-request-id", request_id)])
    line = access_lines.of(request_id)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert status == code
    assert ("x-request-id", request_id) in trailers
    assert line.name == "serve.access" and line.levelno == logging.INFO
    assert (line.method, line.status, line.api) == (method, code.name, api)
    assert getattr(line, "model", None) == model
    assert getattr(line, "version", None) == version
    assert getattr(line, "items", None) == items
    assert 0 < line.latency_ms < elapsed_ms
    assert re.fullmatch(r"ipv[46]:.*:\d+", line.peer)
    assert line.getMessage().startswith(f"{method} {code.name} {line.latency_ms:.3f} ms ")
    assert f" request_id={request_id} api={api} " in line.getMessage()


@pytest.mark.parametrize("name", ["tutorial", "tutorial-bad-image", "classify-stream",
                                  "model-stream-infer-ended-by-error"])  # fmt: skip
def test_the_request_id_comes_back_with_access_lines_off(channel: grpc.Channel, name: str) -> None:
    """The session's server logs no access lines and traces nothing: the id alone comes back."""
    call, _, code, *_ = CALLS[name]
    trailers, status = call(channel, [("x-request-id", f"plain-{name}")])
    assert status == code
    assert ("x-request-id", f"plain-{name}") in trailers


def test_without_an_id_nor_access_lines_the_call_is_untouched(channel: grpc.Channel) -> None:
    trailers, status = CALLS["classify"][0](channel, [])
    assert status == OK
    assert [key for key, _ in trailers] == []


@pytest.mark.parametrize("name", ["classify", "classify-unknown-model", "model-stream-infer"])
def test_a_call_without_an_id_gets_one(
    logged_channel: grpc.Channel, access_lines: AccessLines, name: str
) -> None:
    trailers, _ = CALLS[name][0](logged_channel, [])
    (request_id,) = [value for key, value in trailers if key == "x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", request_id)
    assert access_lines.of(request_id).method == CALLS[name][1]


def test_an_id_is_shortened_and_made_printable(
    logged_channel: grpc.Channel, access_lines: AccessLines
) -> None:
    sent = 'an id with spaces and "quotes"/' + "x" * 200
    trailers, _ = CALLS["classify"][0](logged_channel, [("x-request-id", sent)])
    expected = ('an_id_with_spaces_and_"quotes"/' + "x" * 200)[:MAX_ID_LENGTH]
    assert ("x-request-id", expected) in trailers
    assert access_lines.of(expected).status == "OK"


def test_a_stream_its_client_cancels_is_logged_cancelled(
    logged_channel: grpc.Channel, access_lines: AccessLines
) -> None:
    """A stream held open by its client after one item, until it cancels."""
    held = threading.Event()

    def items() -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(id="1", image=CAT)
        held.wait(TIMEOUT)

    stream = pb_grpc.ClassifierStub(logged_channel).ClassifyStream(
        items(), metadata=[("x-request-id", "cancelled")], timeout=TIMEOUT
    )
    try:
        assert next(stream).id == "1"
        stream.cancel()
        line = access_lines.of("cancelled")
    finally:
        held.set()
    assert (line.status, line.items) == ("CANCELLED", 1)


async def test_every_handler_shape_is_logged_with_its_status(access_lines: AccessLines) -> None:
    """Unary and streamed requests and responses, with handlers that return, yield, write,
    abort and fail: each call's id comes back and its line has the status its client got."""

    async def unary_unary(request: bytes, context: Any) -> bytes:
        if request == b"abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to")
        if request == b"fail":
            raise ValueError("asked to")
        return request

    async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield await unary_unary(request, context)
        if request == b"hold":  # until the client cancels
            await asyncio.Event().wait()

    async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
        return await unary_unary(b"".join([r async for r in requests]), context)

    async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> None:
        async for request in requests:  # the reader-writer form
            await context.write(await unary_unary(request, context))

    def same(data: bytes) -> bytes:
        return data

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, same, same),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, same, same),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, same, same),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, same, same),
    }
    server = grpc.aio.server(interceptors=[RequestLog(access_log=True, tracer=None)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Shapes", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    expected = {
        b"ok": grpc.StatusCode.OK,
        b"abort": grpc.StatusCode.FAILED_PRECONDITION,
        b"fail": grpc.StatusCode.UNKNOWN,
    }
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for shape in handlers:
                for message, code in expected.items():
                    request_id = f"{shape}-{message.decode()}"
                    metadata = (("x-request-id", request_id),)
                    trailers, status = await call_of_shape(channel, shape, message, metadata)
                    assert status == code
                    assert ("x-request-id", request_id) in trailers
                    line = await asyncio.to_thread(access_lines.of, request_id)
                    assert (line.method, line.status) == (f"/t.Shapes/{shape}", code.name)
                    assert getattr(line, "items", None) == (0 if shape == "StreamStream" else None)
            held = channel.unary_stream("/t.Shapes/UnaryStream")(
                b"hold", metadata=(("x-request-id", "held"),), timeout=TIMEOUT
            )
            assert await held.read() == b"hold"
            held.cancel()
            line = await asyncio.to_thread(access_lines.of, "held")
            assert line.status == "CANCELLED"
    finally:
        await server.stop(None)


async def call_of_shape(
    channel: grpc.aio.Channel, shape: str, message: bytes, metadata: Any
) -> tuple[Any, grpc.StatusCode]:
    async def requests() -> AsyncIterator[bytes]:
        yield message

    method = f"/t.Shapes/{shape}"
    call: Any
    if shape == "UnaryUnary":
        call = channel.unary_unary(method)(message, metadata=metadata, timeout=TIMEOUT)
    elif shape == "UnaryStream":
        call = channel.unary_stream(method)(message, metadata=metadata, timeout=TIMEOUT)
    elif shape == "StreamUnary":
        call = channel.stream_unary(method)(requests(), metadata=metadata, timeout=TIMEOUT)
    else:
        call = channel.stream_stream(method)(requests(), metadata=metadata, timeout=TIMEOUT)
    return await ended(call)


# Real server processes, logging JSON lines to stderr.


JSON_LOGGING = ["--log-format", "json", "--access-log"]


def json_lines(server: ServerProcess) -> list[Any]:
    """What ``server`` wrote, each line parsed, once SIGTERM has stopped it cleanly."""
    os.kill(server.pid, signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    return [json.loads(line) for line in server.output().splitlines()]


@pytest.fixture(scope="module")
def json_log(lite0_export: ExportResult) -> list[Any]:
    """The lines a real server wrote while it served a few calls."""
    arguments = ["--model", LITE0, "--artifacts", str(TEST_ARTIFACTS), *JSON_LOGGING]
    with ServerProcess(arguments) as server:
        with grpc.insecure_channel(server.address) as channel:
            for name in ("classify", "tutorial-bad-image", "model-stream-infer"):
                CALLS[name][0](channel, [("x-request-id", f"json-{name}")])
        return json_lines(server)


def test_a_real_server_writes_one_json_object_per_line(json_log: list[Any]) -> None:
    assert json_log, "no line written"
    for line in json_log:
        assert list(line)[:4] == ["time", "level", "logger", "message"]
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
        assert line["time"].endswith("Z")
        assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    (serving,) = [line for line in json_log if line["message"].startswith("serving ")]
    assert (serving["logger"], serving["level"]) == ("serve", "INFO")
    assert serving["message"].startswith(f"serving {LITE0} (onnxruntime) on 127.0.0.1:")


def test_a_real_server_writes_access_lines_as_json(json_log: list[Any]) -> None:
    lines = {line["request_id"]: line for line in json_log if line["logger"] == "serve.access"}
    assert set(lines) == {"json-classify", "json-tutorial-bad-image", "json-model-stream-infer"}
    for line in lines.values():
        assert line["level"] == "INFO"
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
        assert line["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:"))
        assert line["message"].startswith(f"{line['method']} {line['status']} ")
    fields = ["method", "status", "api", "model", "version", "items"]
    said = {request_id: [line.get(key) for key in fields] for request_id, line in lines.items()}
    assert said == {
        "json-classify": ["/torchgrpc.v1.Classifier/Classify", "OK", "classifier", LITE0, "", None],
        "json-tutorial-bad-image": [
            "/InferenceServer/inference", "INVALID_ARGUMENT", "tutorial", "", "", None,
        ],
        "json-model-stream-infer": [
            "/inference.GRPCInferenceService/ModelStreamInfer", "OK", "kserve", LITE0, "", 2,
        ],
    }  # fmt: skip


def test_workers_write_json_lines_naming_themselves(lite0_export: ExportResult) -> None:
    """--workers: each worker is a process of its own, which sets its logging up as the parent
    does."""
    arguments = ["--workers", "2", "--model", LITE0, "--artifacts", str(TEST_ARTIFACTS)]
    with ServerProcess([*arguments, *JSON_LOGGING]) as server:
        with grpc.insecure_channel(server.address) as channel:
            for number in range(4):
                server_live(channel, [("x-request-id", f"worker-call-{number}")])
        lines = json_lines(server)
    serving = [line for line in lines if line["message"].startswith("serving ")]
    assert sorted(line["process"] for line in serving) == ["worker-0", "worker-1"]
    accesses = [line for line in lines if line["logger"] == "serve.access"]
    assert sorted(line["request_id"] for line in accesses) == [
        f"worker-call-{number}" for number in range(4)
    ]
    assert {line["process"] for line in accesses} <= {"worker-0", "worker-1"}


def test_a_worker_that_fails_to_start_says_why_in_one_json_line(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    arguments = ["--workers", "2", "--model-repository", str(tmp_path / "models")]
    with pytest.raises(RuntimeError, match="exited at start-up") as failed:
        ServerProcess([*arguments, *JSON_LOGGING]).__enter__()
    # The error's first line says the server exited; what it wrote follows.
    lines = [json.loads(line) for line in str(failed.value).splitlines()[1:]]
    failures = [line for line in lines if line["level"] == "ERROR" and "process" in line]
    assert failures and all("has no model" in line["message"] for line in failures)


# configure_logging itself, in a fresh interpreter (as `python -m serve` calls it).

LOG_SOME = """
import logging, sys
from serve.logs import configure_logging
configure_logging("INFO", sys.argv[1])
log = logging.getLogger("serve.test")
log.debug("not shown")
log.info("hello %s", "there", extra={"request_id": "r1", "latency_ms": 1.5, "path": Path("/x")})
try:
    raise ValueError("boom")
except ValueError:
    log.exception("it failed")
"""


def logged_by(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path\n" + LOG_SOME, log_format],
        capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.stdout == ""
    return done.stderr.splitlines()


def test_json_lines_carry_the_extra_fields_and_the_traceback() -> None:
    hello, failed = (json.loads(line) for line in logged_by("json"))
    assert {key: value for key, value in hello.items() if key != "time"} == {
        "level": "INFO", "logger": "serve.test", "message": "hello there",
        "request_id": "r1", "latency_ms": 1.5, "path": "/x",
    }  # fmt: skip
    assert (failed["level"], failed["message"]) == ("ERROR", "it failed")
    assert failed["exc_info"].startswith("Traceback (most recent call last):")
    assert failed["exc_info"].endswith("ValueError: boom")


def test_text_lines_are_as_they_were() -> None:
    lines = logged_by("text")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO serve.test: hello there", lines[0]
    )
    assert re.fullmatch(r"\S+ \S+ ERROR serve.test: it failed", lines[1])
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
