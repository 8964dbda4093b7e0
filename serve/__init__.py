"""torchgrpc: PyTorch models served over gRPC with asyncio.

The clients are imported eagerly (they need only grpc); ``Server`` and ``ServerConfig`` load on
first use, so ``import serve`` in a client process doesn't pull in PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serve.client import AsyncClient, Client

if TYPE_CHECKING:
    from serve.config import ServerConfig
    from serve.server import Server

__all__ = ["AsyncClient", "Client", "Server", "ServerConfig"]


def __getattr__(name: str) -> Any:
    if name == "Server":
        from serve.server import Server

        return Server
    if name == "ServerConfig":
        from serve.config import ServerConfig

        return ServerConfig
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
