"""Server reflection, as ``grpc.reflection.v1`` (what current grpcurl and Postman ask for) and as
``grpc.reflection.v1alpha`` (what older clients ask for).

grpcio-reflection ships only v1alpha (grpc/grpc#38576). v1 is the same protocol under another
package: the same messages, field for field. So the one servicer answers both, and v1's file
descriptor, made from v1alpha's by renaming its package, is added to the default pool so that
reflection can describe v1 itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "enable_reflection"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
# grpc's own name for the file (grpc/src/proto/grpc/reflection/v1/reflection.proto).
V1_FILE = "grpc/reflection/v1/reflection.proto"


def enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    """Serves reflection of ``service_names`` and of both reflection services on ``server``."""
    _add_v1_descriptor()
    # grpc-stubs doesn't know the asyncio servicer (reflection.aio, public since grpcio 1.30).
    servicer = reflection.aio.ReflectionServicer(  # type: ignore[attr-defined]
        [*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME]
    )
    # The v1alpha messages serve v1 too: on the wire the two are the same bytes.
    methods = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    for service in (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))


def _add_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return  # added by an earlier server of this process
    except KeyError:
        pass
    v1 = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    old_prefix, new_prefix = f".{v1.package}.", f".{V1_PACKAGE}."
    v1.name, v1.package = V1_FILE, V1_PACKAGE
    for message in v1.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = new_prefix + field.type_name[len(old_prefix) :]
    for service in v1.service:
        for rpc in service.method:
            rpc.input_type = new_prefix + rpc.input_type[len(old_prefix) :]
            rpc.output_type = new_prefix + rpc.output_type[len(old_prefix) :]
    v1.options.java_package = "io.grpc.reflection.v1"
    v1.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    pool.AddSerializedFile(v1.SerializeToString())
