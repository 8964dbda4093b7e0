"""How a call of any shape ended, for tests that make calls of every shape."""

from __future__ import annotations

from typing import Any

import grpc


async def ended(call: Any) -> tuple[list[Any], grpc.StatusCode]:
    """Reads ``call`` (a grpc.aio call of any shape) to its end: its trailers and status."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return list(error.trailing_metadata()), error.code()
    return list(await call.trailing_metadata()), await call.code()
