"""Per-RPC request ids, access lines and traces (to be written)."""

from __future__ import annotations

from typing import Any

import grpc

from serve.config import ServerConfig

__all__ = ["request_log_interceptors"]


def request_log_interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    return []
