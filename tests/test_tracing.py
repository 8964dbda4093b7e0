"""OpenTelemetry traces of a real server: a server span per RPC of each API, unary and streamed,
its parent the client's span (W3C trace context in the metadata), with the decode, queue and
compute spans of each inference request inside it; and the OTLP exporter of a real process."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve import tracing
from serve.config import ServerConfig
from serve.pb.kserve import grpc_service_pb2 as kserve
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, ROOT, TEST_ARTIFACTS, ServerThread, config_with
from tests.test_logs import CALLS, LITE0

TIMEOUT = 30


class SpanEnded(SpanProcessor):
    """Tells waiting tests that a span ended (and was exported: it comes after the exporter's
    processor). A server span ends as its handler does, after an error status went out."""

    def __init__(self) -> None:
        self.ended = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        with self.ended:
            self.ended.notify_all()


class Spans:
    """A traced server's channel, and the spans it exported."""

    def __init__(
        self, channel: grpc.Channel, exporter: InMemorySpanExporter, ended: SpanEnded
    ) -> None:
        self.channel = channel
        self._exporter = exporter
        self._ended = ended

    def of_trace(self, trace_id: int) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """The server span of the trace ``trace_id`` (once it has ended), and every span of it."""

        def in_trace() -> list[ReadableSpan]:
            return [
                span
                for span in self._exporter.get_finished_spans()
                if span.context is not None and span.context.trace_id == trace_id
            ]

        def server() -> list[ReadableSpan]:
            return [span for span in in_trace() if span.kind == SpanKind.SERVER]

        with self._ended.ended:
            assert self._ended.ended.wait_for(server, timeout=TIMEOUT), "no server span"
        (span,) = server()
        return span, in_trace()


@pytest.fixture(scope="module")
def spans(base_config: ServerConfig) -> Iterator[Spans]:
    """A server whose spans go to an in-memory exporter (the endpoint named is never used)."""
    exporter, ended = InMemorySpanExporter(), SpanEnded()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(ended)
    tracing.install(provider)
    try:
        config = config_with(base_config, otlp_endpoint="http://127.0.0.1:9", access_log=True)
        with ServerThread(config) as running, grpc.insecure_channel(running.address) as channel:
            yield Spans(channel, exporter, ended)
    finally:
        tracing.install(None)
        provider.shutdown()


def traceparent() -> tuple[int, int, list[tuple[str, str]]]:
    """A new client span's trace id and span id, and the metadata that names it."""
    trace_id, span_id = secrets.randbits(128), secrets.randbits(64)
    return trace_id, span_id, [("traceparent", f"00-{trace_id:032x}-{span_id:016x}-01")]


# (call, span name, rpc.grpc.status_code, model named, inference requests).
TRACED = {
    "tutorial": ("InferenceServer/inference", 0, "", 1),
    "classify": ("torchgrpc.v1.Classifier/Classify", 0, LITE0, 1),
    "classify-stream": (
        "torchgrpc.v1.Classifier/ClassifyStream",
        0,
        "efficientnet_lite0,resnet34",
        2,
    ),
    "model-infer": ("inference.GRPCInferenceService/ModelInfer", 0, LITE0, 1),
    "model-stream-infer": ("inference.GRPCInferenceService/ModelStreamInfer", 0, LITE0, 1),
}


@pytest.mark.parametrize("name", TRACED)
def test_a_call_is_a_server_span_holding_its_stages(spans: Spans, name: str) -> None:
    span_name, code, model, requests = TRACED[name]
    trace_id, parent_id, metadata = traceparent()
    CALLS[name][0](spans.channel, metadata)
    server, every = spans.of_trace(trace_id)

    assert (server.name, server.kind) == (span_name, SpanKind.SERVER)
    assert server.parent is not None and server.parent.is_remote
    assert server.parent.span_id == parent_id
    service, method = span_name.split("/")
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
        "rpc.grpc.status_code": code, "model": model, "model.version": "",
    }  # fmt: skip
    assert server.status.status_code == StatusCode.UNSET
    assert server.start_time is not None and server.end_time is not None

    infers = [span for span in every if span.name == "infer"]
    assert len(infers) == requests
    assert len(every) == 1 + 4 * requests
    for infer in infers:
        assert infer.parent is not None and infer.parent.span_id == server.context.span_id
        assert server.start_time <= infer.start_time <= infer.end_time <= server.end_time
        stages = sorted(
            (
                span
                for span in every
                if span.parent and span.parent.span_id == infer.context.span_id
            ),
            key=lambda span: span.start_time or 0,
        )
        assert [stage.name for stage in stages] == ["decode", "queue", "compute"]
        at = infer.start_time
        for stage in stages:
            assert stage.start_time == at  # end to end, from the infer span's start
            assert stage.end_time is not None and stage.end_time <= infer.end_time
            at = stage.end_time
        decode, _, compute = stages
        assert decode.end_time > decode.start_time
        assert compute.end_time > compute.start_time


def test_a_failed_call_has_its_status_and_no_stages(spans: Spans) -> None:
    trace_id, _, metadata = traceparent()
    _, status = CALLS["classify-unknown-model"][0](spans.channel, metadata)
    assert status == grpc.StatusCode.NOT_FOUND
    server, every = spans.of_trace(trace_id)
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.attributes["model"] == "no-such-model"
    # The client's mistake: not an error of the server's.
    assert server.status.status_code == StatusCode.UNSET
    assert every == [server]


def test_a_status_of_the_servers_making_is_an_error(spans: Spans) -> None:
    """UNIMPLEMENTED, INTERNAL, UNAVAILABLE...: the server's failures, as OpenTelemetry's
    conventions for gRPC servers say (the others are answers to a client's mistakes)."""
    trace_id, _, metadata = traceparent()
    stub = kserve_grpc.GRPCInferenceServiceStub(spans.channel)
    with pytest.raises(grpc.RpcError) as failed:
        stub.TraceSetting(kserve.TraceSettingRequest(), metadata=metadata, timeout=TIMEOUT)
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
    server, _ = spans.of_trace(trace_id)
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert server.status.status_code == StatusCode.ERROR


def test_a_call_without_trace_context_starts_a_trace(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    """Its access line names the trace, and its request id (made up) comes back."""
    with caplog.at_level(logging.INFO, logger="serve.access"):
        trailers, _ = CALLS["server-live"][0](spans.channel, [])
    (request_id,) = [value for key, value in trailers if key == "x-request-id"]
    (line,) = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    server, every = spans.of_trace(int(line.trace_id, 16))
    assert server.parent is None
    assert server.name == "inference.GRPCInferenceService/ServerLive"
    assert "model" not in (server.attributes or {})
    assert every == [server]


# The OTLP exporter of a real server process, sending to a collector here.


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: Any, context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_a_real_server_sends_its_spans_to_the_otlp_endpoint(lite0_export: ExportResult) -> None:
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    trace_id, _, metadata = traceparent()
    arguments = ["--model", LITE0, "--artifacts", str(TEST_ARTIFACTS),
                 "--otlp-endpoint", f"http://127.0.0.1:{port}"]  # fmt: skip
    try:
        with ServerProcess(arguments) as server, grpc.insecure_channel(server.address) as channel:
            request = pb.ClassifyRequest(images=[CAT_JPG.read_bytes()])
            pb_grpc.ClassifierStub(channel).Classify(request, metadata=metadata, timeout=TIMEOUT)
        # Stopped: the spans still batched were sent as the process exited.
    finally:
        receiver.stop(None)
    sent = [
        (resource.resource, span)
        for export in collector.requests
        for resource in export.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
        if span.trace_id == trace_id.to_bytes(16, "big")
    ]
    assert sorted(span.name for _, span in sent) == [
        "compute", "decode", "infer", "queue", "torchgrpc.v1.Classifier/Classify",
    ]  # fmt: skip
    service_names = {
        attribute.value.string_value
        for resource, _ in sent
        for attribute in resource.attributes
        if attribute.key == "service.name"
    }
    assert service_names == {"torchgrpc"}


def test_without_opentelemetry_tracing_says_what_to_install(lite0_export: ExportResult) -> None:
    # A None entry makes `import opentelemetry...` fail, as if the extra were not installed.
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "from serve.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "--model", LITE0, "--artifacts", str(TEST_ARTIFACTS),
         "--port", "0", "--metrics-port", "0", "--otlp-endpoint", "http://127.0.0.1:4317"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.rstrip().endswith(
        "--otlp-endpoint needs OpenTelemetry: pip install 'torchgrpc[tracing]'"
    )
