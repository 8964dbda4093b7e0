"""Limits against hostile or careless clients, each answered with its status, on a real server:
calls without a message or a deadline, oversized stream items, too many calls, abusive pings,
and connections that live too long or sit idle."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from serve.config import ServerConfig
from serve.pb import inference_pb2
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, ServerThread, config_with
from tests.test_metrics import kserve_request

MESSAGE_LIMIT = 1024 * 1024
CAT = CAT_JPG.read_bytes()
# Over the server's message limit, under the transport's (twice it): refused alone.
OVERSIZED = b"\0" * (MESSAGE_LIMIT + 1)
UNARY_METHODS = [
    "/InferenceServer/inference",
    "/torchgrpc.v1.Classifier/Classify",
    "/inference.GRPCInferenceService/ModelInfer",
    "/grpc.health.v1.Health/Check",  # open to anyone when tokens are on: bounded all the same
]
STREAMS_PER_CONNECTION = 4
CONCURRENT_RPCS = 8
SETTINGS_MAX_CONCURRENT_STREAMS = 3


def lite0_server(base_config: ServerConfig, **changes: object) -> Iterator[ServerThread]:
    """A server of the default model alone, with ``changes`` to the session's settings."""
    config = config_with(base_config, models=("efficientnet_lite0",), **changes)
    with ServerThread(config) as running:
        yield running


@pytest.fixture(scope="module")
def limited(base_config: ServerConfig) -> Iterator[ServerThread]:
    yield from lite0_server(
        base_config,
        max_message_bytes=MESSAGE_LIMIT,
        default_deadline_seconds=1.0,
        max_streams_per_connection=STREAMS_PER_CONNECTION,
        max_concurrent_rpcs=CONCURRENT_RPCS,
        # gRPC's own default is five minutes: a client pinging every 4 s passes only with this.
        min_client_ping_seconds=3.0,
    )


def raw_call(channel: grpc.Channel, method: str) -> grpc.StreamStreamMultiCallable:
    """Any method called as a stream of raw bytes: a client that breaks the unary contract."""
    return channel.stream_stream(
        method, request_serializer=lambda data: data, response_deserializer=lambda data: data
    )


@pytest.mark.parametrize("method", UNARY_METHODS)
def test_a_unary_call_ended_without_its_message_is_invalid_argument(
    limited: ServerThread, method: str
) -> None:
    with grpc.insecure_channel(limited.address) as channel, pytest.raises(grpc.RpcError) as error:
        list(raw_call(channel, method)(iter(()), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "the call ended without its request message"


@pytest.mark.parametrize("method", UNARY_METHODS)
def test_a_unary_call_without_deadline_that_never_sends_gets_the_default_deadline(
    limited: ServerThread, method: str
) -> None:
    held = threading.Event()

    def nothing() -> Iterator[bytes]:
        held.wait(30)  # neither a message nor the end of the call
        yield from ()

    started = time.monotonic()
    with grpc.insecure_channel(limited.address) as channel:
        try:
            with pytest.raises(grpc.RpcError) as error:
                list(raw_call(channel, method)(nothing()))  # no timeout: no deadline
        finally:
            held.set()
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "server's default (1 s)" in str(error.value.details())
    assert time.monotonic() - started < 10


def test_a_client_deadline_overrides_the_default_and_normal_calls_pass(
    limited: ServerThread,
) -> None:
    with grpc.insecure_channel(limited.address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        reply = stub.Classify(pb.ClassifyRequest(images=[CAT], top_k=1))  # no deadline set
        assert reply.classifications[0].labels[0].class_id == EGYPTIAN_CAT
        tutorial = channel.unary_unary(
            "/InferenceServer/inference",
            request_serializer=inference_pb2.InferenceRequest.SerializeToString,
            response_deserializer=inference_pb2.InferenceReply.FromString,
        )
        assert list(tutorial(inference_pb2.InferenceRequest(image=[CAT]), timeout=30).pred) == [
            EGYPTIAN_CAT
        ]


def test_an_oversized_unary_request_is_resource_exhausted(limited: ServerThread) -> None:
    with grpc.insecure_channel(limited.address) as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(images=[OVERSIZED]), timeout=30)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-message-bytes" in str(error.value.details())


def test_an_oversized_classifier_stream_item_fails_alone(limited: ServerThread) -> None:
    items = [
        pb.ClassifyStreamRequest(id="before", image=CAT, top_k=1),
        pb.ClassifyStreamRequest(id="too-big", image=OVERSIZED, top_k=1),
        pb.ClassifyStreamRequest(id="after", image=CAT, top_k=1),
    ]
    with grpc.insecure_channel(limited.address) as channel:
        answers = {
            answer.id: answer
            for answer in pb_grpc.ClassifierStub(channel).ClassifyStream(iter(items), timeout=30)
        }
    assert set(answers) == {"before", "too-big", "after"}
    for good in ("before", "after"):
        assert answers[good].classification.labels[0].class_id == EGYPTIAN_CAT
    failed = answers["too-big"].error
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "--max-message-bytes" in failed.message


def test_an_oversized_kserve_stream_item_fails_alone_in_order(limited: ServerThread) -> None:
    requests = [kserve_request(CAT), kserve_request(OVERSIZED), kserve_request(CAT)]
    for number, request in enumerate(requests):
        request.id = str(number)
    with grpc.insecure_channel(limited.address) as channel:
        stub = kserve_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(requests), timeout=30))
    assert [answer.infer_response.id for answer in answers] == ["0", "1", "2"]
    assert [bool(answer.error_message) for answer in answers] == [False, True, False]
    assert "--max-message-bytes" in answers[1].error_message
    assert answers[1].infer_response.model_name == "efficientnet_lite0"


def test_a_stream_item_over_the_transport_limit_ends_the_stream(limited: ServerThread) -> None:
    huge = pb.ClassifyStreamRequest(id="huge", image=b"\0" * (2 * MESSAGE_LIMIT + 1))
    with grpc.insecure_channel(limited.address) as channel, pytest.raises(grpc.RpcError) as error:
        list(pb_grpc.ClassifierStub(channel).ClassifyStream(iter([huge]), timeout=30))
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class HeldStreams:
    """Streams opened on ``channel`` that send one item, then nothing until released: each holds
    an RPC."""

    def __init__(self, channel: grpc.Channel, count: int) -> None:
        self._release = threading.Event()
        stub = pb_grpc.ClassifierStub(channel)
        self.calls = [stub.ClassifyStream(self._items(), timeout=60) for _ in range(count)]

    def _items(self) -> Iterator[pb.ClassifyStreamRequest]:
        yield pb.ClassifyStreamRequest(id="first", image=CAT, top_k=1)
        self._release.wait(60)

    def started(self) -> list[grpc.StatusCode]:
        """Waits for each stream's first answer: OK for a stream the server serves, else the
        status it refused the stream with."""
        codes = []
        for call in self.calls:
            try:
                next(call)
            except grpc.RpcError as error:
                codes.append(error.code())
            else:
                codes.append(grpc.StatusCode.OK)
        return codes

    def release(self) -> None:
        """Ends the streams; those the server ended already are left as they are."""
        self._release.set()
        for call in self.calls:
            with contextlib.suppress(grpc.RpcError):
                list(call)


def classify(channel: grpc.Channel, timeout: float) -> pb.ClassifyResponse:
    return pb_grpc.ClassifierStub(channel).Classify(
        pb.ClassifyRequest(images=[CAT], top_k=1), timeout=timeout
    )


def server_settings(port: int) -> dict[int, int]:
    """The HTTP/2 SETTINGS the server sends a new connection, by identifier."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        # The client preface, then an empty SETTINGS frame (length 0, type 4, no flags, stream 0).
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        received = b""
        while len(received) < 9 or len(received) < 9 + int.from_bytes(received[:3], "big"):
            chunk = connection.recv(65536)
            assert chunk, "the server closed the connection"
            received += chunk
    length, frame_type = int.from_bytes(received[:3], "big"), received[3]
    assert frame_type == 4, "a server's first frame is its SETTINGS"
    payload = received[9 : 9 + length]
    return dict(struct.iter_unpack(">HI", payload))


def test_streams_per_connection_are_limited(limited: ServerThread) -> None:
    # gRPC's client queues calls beyond the limit (or opens another connection); a raw HTTP/2
    # client that ignores it has its extra streams refused by the transport.
    assert server_settings(limited.server.port)[SETTINGS_MAX_CONCURRENT_STREAMS] == (
        STREAMS_PER_CONNECTION
    )


def test_concurrent_rpcs_are_limited_with_resource_exhausted(limited: ServerThread) -> None:
    connections = [
        grpc.insecure_channel(limited.address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(4)
    ]
    # More streams held open than the server serves at once (over three connections, as each
    # takes at most STREAMS_PER_CONNECTION).
    held = [HeldStreams(channel, STREAMS_PER_CONNECTION) for channel in connections[:3]]
    try:
        codes = [code for streams in held for code in streams.started()]
        assert codes.count(grpc.StatusCode.OK) == CONCURRENT_RPCS
        with pytest.raises(grpc.RpcError) as error:
            classify(connections[3], timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Concurrent RPC limit exceeded" in str(error.value.details())
    finally:
        for streams in held:
            streams.release()
    assert classify(connections[3], timeout=30).classifications
    for channel in connections:
        channel.close()


def pinging(every_ms: int) -> list[tuple[str, int]]:
    """Options of a client that pings its server every ``every_ms``, calls open or not."""
    return [
        ("grpc.keepalive_time_ms", every_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
    ]


def test_a_client_pinging_too_often_is_sent_away(limited: ServerThread) -> None:
    with grpc.insecure_channel(limited.address, options=pinging(50)) as channel:
        held = HeldStreams(channel, 1)
        try:
            assert held.started() == [grpc.StatusCode.OK]
            with pytest.raises(grpc.RpcError) as error:
                list(held.calls[0])  # the stream sends nothing more: only the server ends it
        finally:
            held.release()
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error.value.details() == "Too many pings"


def test_a_client_pinging_within_the_policy_keeps_its_stream(limited: ServerThread) -> None:
    with grpc.insecure_channel(limited.address, options=pinging(4000)) as channel:
        held = HeldStreams(channel, 1)
        assert held.started() == [grpc.StatusCode.OK]
        time.sleep(13)  # three pings: gRPC's default policy would send it away at the third
        held.release()
        assert held.calls[0].code() == grpc.StatusCode.OK


@pytest.fixture(scope="module")
def short_lived(base_config: ServerConfig) -> Iterator[ServerThread]:
    yield from lite0_server(
        base_config, max_connection_age_seconds=1.0, max_connection_age_grace_seconds=1.0
    )


@pytest.fixture(scope="module")
def closing_idle(base_config: ServerConfig) -> Iterator[ServerThread]:
    """Connections closed after a second without a call, and no other limit on their age."""
    yield from lite0_server(
        base_config, max_connection_idle_seconds=1.0, max_connection_age_seconds=0.0
    )


def test_a_connection_past_its_age_and_grace_is_closed_and_clients_reconnect(
    short_lived: ServerThread,
) -> None:
    with grpc.insecure_channel(short_lived.address) as channel:
        held = HeldStreams(channel, 1)
        assert held.started() == [grpc.StatusCode.OK]
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            list(held.calls[0])  # the stream sends nothing more: only the server ends it
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 10
        held.release()
        # A new call on the same channel gets a new connection.
        assert classify(channel, timeout=30).classifications


def test_an_idle_connection_is_closed(closing_idle: ServerThread) -> None:
    with grpc.insecure_channel(closing_idle.address) as channel:
        assert classify(channel, timeout=30).classifications
        ready = grpc.ChannelConnectivity.READY
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not states or states[-1] == ready):
            time.sleep(0.1)
        assert states and states[-1] != ready, "the server never closed the idle connection"
