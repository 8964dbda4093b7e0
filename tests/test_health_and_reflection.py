"""Standard services: grpc.health.v1 (overall and per service), reflection (v1 and v1alpha),
graceful shutdown."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serve.config import ServerConfig
from tests.conftest import ServerThread, config_with

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ["InferenceServer", "torchgrpc.v1.Classifier"]
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
EVERY_SERVICE = {
    *SERVICES, "inference.GRPCInferenceService", "grpc.health.v1.Health", V1, V1ALPHA,
}  # fmt: skip


@pytest.mark.parametrize("service", ["", *SERVICES])
def test_health_overall_and_per_service(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING


def test_health_of_an_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="nope"))
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in response.list_services_response.service}
    assert names == EVERY_SERVICE


def test_reflection_describes_the_classifier(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="torchgrpc.v1.Classifier"
    )
    response = next(stub.ServerReflectionInfo(iter([request])))
    assert response.file_descriptor_response.file_descriptor_proto


def reflection_v1(channel: grpc.Channel, request: Any, response_type: type[Any]) -> Any:
    """One exchange with grpc.reflection.v1, in the given message classes."""
    call = channel.stream_stream(
        f"/{V1}/ServerReflectionInfo",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_type.FromString,
    )
    return next(call(iter([request]), timeout=30))


def test_reflection_v1_describes_itself_and_a_client_built_from_that_lists_services(
    channel: grpc.Channel,
) -> None:
    """What current grpcurl does: ask v1 for v1's own file, build the messages from it, use them."""
    # v1's messages are v1alpha's, field for field: the v1alpha classes can ask the first question.
    asked = reflection_v1(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=V1),
        reflection_pb2.ServerReflectionResponse,
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in asked.file_descriptor_response.file_descriptor_proto
    ]
    (v1_file,) = [f for f in files if f.package == "grpc.reflection.v1"]
    (rpc,) = v1_file.service[0].method
    assert (v1_file.service[0].name, rpc.name) == ("ServerReflection", "ServerReflectionInfo")
    assert rpc.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert (rpc.client_streaming, rpc.server_streaming) == (True, True)

    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    request_type, response_type = (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))
        for name in ("ServerReflectionRequest", "ServerReflectionResponse")
    )
    listed = reflection_v1(channel, request_type(list_services=""), response_type)
    assert {s.name for s in listed.list_services_response.service} == EVERY_SERVICE
    assert listed.original_request.list_services == ""


def test_reflection_v1_describes_the_classifier(channel: grpc.Channel) -> None:
    asked = reflection_v1(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="torchgrpc.v1.Classifier"),
        reflection_pb2.ServerReflectionResponse,
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(data)
        for data in asked.file_descriptor_response.file_descriptor_proto
    ]
    assert "torchgrpc.v1" in {f.package for f in files}


def test_shutdown_reports_not_serving_then_stops(base_config: ServerConfig) -> None:
    config = config_with(base_config, models=("efficientnet_lite0",), grace_seconds=1.0)
    with ServerThread(config) as running, grpc.insecure_channel(running.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        running.stop()
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as failure:
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
