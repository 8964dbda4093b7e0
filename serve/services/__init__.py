"""Wire adapters: protobuf <-> plain Python, statuses. The only code that knows protobuf."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import grpc

if TYPE_CHECKING:
    from serve.services.mounting import WireLimits

__all__ = ["WireService"]


class WireService(Protocol):
    """A gRPC service the server mounts, checks health for and lists in reflection."""

    SERVICE_NAME: ClassVar[str]

    def register(self, server: grpc.aio.Server, limits: WireLimits) -> None: ...
