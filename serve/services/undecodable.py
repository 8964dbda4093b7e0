"""Requests whose bytes are not the message they claim to be: INVALID_ARGUMENT, one quiet line.

grpc.aio decodes a request before the handler runs, and a protobuf DecodeError there becomes
UNKNOWN with a traceback logged for every such request: a client could flood the log with them.
``register`` mounts a service as its generated ``add_..._to_server`` would, with decoders that
hand an ``Undecodable`` marker to handlers that answer it INVALID_ARGUMENT (a stream ends with it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from serve.errors import InvalidArgument
from serve.services.status import Context

__all__ = ["register"]

log = logging.getLogger(__name__)

Decode = Callable[[bytes], Any]


class Undecodable:
    """What a request decoder returns for bytes that don't parse."""

    def __init__(self, message: str) -> None:
        self.message = message


class _UndecodableItem(InvalidArgument):
    """A stream's item that didn't parse: ends the stream with INVALID_ARGUMENT (a stream handler
    that maps errors to statuses maps it so too)."""


def register(
    add_to_server: Callable[[Any, Any], None], servicer: object, server: grpc.aio.Server
) -> None:
    """``add_to_server(servicer, server)`` (a generated function), with lenient decoders."""
    capture = _Capture()
    add_to_server(servicer, capture)
    for service, handlers in capture.services.items():
        lenient = {method: _lenient(handler) for method, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, lenient),))
        # grpc.aio servers have it (generated code calls it); their type stubs omit it.
        server.add_registered_method_handlers(service, lenient)  # type: ignore[attr-defined]


class _Capture:
    """Stands in for the server while a generated function registers its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive by name below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = handlers


def _lenient(handler: Any) -> Any:
    decode = _decoder(handler.request_deserializer)
    if handler.unary_unary is not None:
        return handler._replace(
            request_deserializer=decode, unary_unary=_checked_unary(handler.unary_unary)
        )
    if handler.stream_stream is not None:
        return handler._replace(
            request_deserializer=decode, stream_stream=_checked_stream(handler.stream_stream)
        )
    return handler  # no other shapes are served


def _decoder(decode: Decode) -> Decode:
    def lenient_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as error:
            return Undecodable(f"the request is not a valid message: {error}")

    return lenient_decode


def _checked_unary(
    behaviour: Callable[[Any, Context], Awaitable[Any]],
) -> Callable[[Any, Context], Awaitable[Any]]:
    async def checked(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            log.debug("%s", request.message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return checked


def _checked_stream(
    behaviour: Callable[[AsyncIterator[Any], Context], Awaitable[None]],
) -> Callable[[AsyncIterator[Any], Context], Awaitable[None]]:
    async def checked(requests: AsyncIterator[Any], context: Context) -> None:
        failed: list[Undecodable] = []

        async def decoded() -> AsyncIterator[Any]:
            async for item in requests:
                if isinstance(item, Undecodable):
                    failed.append(item)
                    raise _UndecodableItem(item.message)
                yield item

        try:
            await behaviour(decoded(), context)
        except grpc.aio.AbortError:
            raise  # the handler ended the call with a status of its own
        except Exception:
            if not failed:
                raise
        if failed:
            log.debug("%s", failed[0].message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, failed[0].message)

    return checked
