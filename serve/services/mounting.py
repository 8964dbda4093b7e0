"""How our services are mounted: what every request passes before its handler runs.

``mount`` registers a service as its generated ``add_..._to_server`` would, with three changes:

- Lenient decoders. grpc.aio decodes a request before the handler runs, and a protobuf
  DecodeError there becomes UNKNOWN with a traceback logged for every such request: a client
  could flood the log. Bytes that don't parse reach the handler as an ``Undecodable`` marker
  instead, answered INVALID_ARGUMENT with one debug line (a stream ends with it).
- The size limit. gRPC's own limit ends a whole stream when one item is too large; the
  transport's limit is set above ``max_message_bytes`` (``transport_message_bytes``) and the
  decoder applies ours, so an item over it fails alone, answered RESOURCE_EXHAUSTED with its id.
- Unary methods are served as client-streaming ones. gRPC reads a unary call's message before
  the handler runs, and a call that ends without one is never answered; read here, it gets
  INVALID_ARGUMENT. A unary call whose client set no deadline gets the server's default, which
  also bounds the wait for the message (streams have none: they may rightly last for hours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from serve.errors import InvalidArgument, ResourceExhausted
from serve.services.status import Context, default_deadline
from serve.services.streaming import Refused

__all__ = ["WireLimits", "mount", "transport_message_bytes"]

log = logging.getLogger(__name__)

Decode = Callable[[bytes], Any]
UnaryBehaviour = Callable[[Any, Context], Awaitable[Any]]
StreamBehaviour = Callable[[AsyncIterator[Any], Context], Awaitable[None]]


def transport_message_bytes(max_message_bytes: int) -> int:
    """What gRPC itself accepts: room for stream items over our limit to be read and refused
    alone; beyond it gRPC ends the call (it won't buffer a message of any size)."""
    return min(2 * max_message_bytes, 2**31 - 1)


@dataclass(frozen=True)
class WireLimits:
    """What ``mount`` applies (their defaults are ServerConfig's)."""

    max_message_bytes: int
    # Of unary calls whose client set none, in seconds; 0 = none.
    default_deadline: float


class Undecodable:
    """What a request decoder returns for bytes that don't parse."""

    def __init__(self, message: str) -> None:
        self.message = message


class _UndecodableItem(InvalidArgument):
    """A stream's item that didn't parse: ends the stream with INVALID_ARGUMENT (a stream handler
    that maps errors to statuses maps it so too)."""


def mount(
    add_to_server: Callable[[Any, Any], None],
    servicer: object,
    server: grpc.aio.Server,
    limits: WireLimits,
) -> None:
    """``add_to_server(servicer, server)`` (a generated function), with the changes above."""
    capture = _Capture()
    add_to_server(servicer, capture)
    for service, handlers in capture.services.items():
        mounted = {method: _mounted(handler, limits) for method, handler in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, mounted),))
        # grpc.aio servers have it (generated code calls it); their type stubs omit it.
        server.add_registered_method_handlers(service, mounted)  # type: ignore[attr-defined]


class _Capture:
    """Stands in for the server while a generated function registers its handlers."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same handlers arrive by name below

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.services[service] = handlers


def _mounted(handler: Any, limits: WireLimits) -> Any:
    if handler.unary_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary_from_stream(handler.unary_unary, limits.default_deadline),
            request_deserializer=_decoder(handler.request_deserializer, limits, identify=False),
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return handler._replace(
            request_deserializer=_decoder(handler.request_deserializer, limits, identify=True),
            stream_stream=_checked_stream(handler.stream_stream),
        )
    return handler  # no other shapes are served


def _decoder(decode: Decode, limits: WireLimits, *, identify: bool) -> Decode:
    """``identify``: an oversized stream item is still parsed for the fields that identify it
    (id, model), so that its answer can say which item failed."""
    limit = limits.max_message_bytes

    def lenient_decode(data: bytes) -> Any:
        size = len(data)
        if size > limit and not identify:
            return Refused(None, _too_large(size, limit))
        try:
            message = decode(data)
        except DecodeError as error:
            return Undecodable(f"the request is not a valid message: {error}")
        if size > limit:
            return Refused(_identity(message), _too_large(size, limit))
        return message

    return lenient_decode


def _too_large(size: int, limit: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"the message is {size:,} bytes, more than the server accepts ({limit:,}: "
        "--max-message-bytes)"
    )


def _identity(message: Message) -> Message:
    """``message`` without its payload: its bytes, repeated and message fields cleared."""
    for field, _ in message.ListFields():
        if (
            field.type in (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE)
            or field.is_repeated
        ):
            message.ClearField(field.name)
    return message


def _unary_from_stream(
    behaviour: UnaryBehaviour, deadline_seconds: float
) -> Callable[[AsyncIterator[Any], Context], Awaitable[Any]]:
    async def unary(requests: AsyncIterator[Any], context: Context) -> Any:
        if not deadline_seconds or context.time_remaining() is not None:
            return await behaviour(await _the_request(requests, context), context)
        loop = asyncio.get_running_loop()
        # The handlers' deadlines are on time.monotonic(), which is the event loop's clock.
        deadline = loop.time() + deadline_seconds
        default_deadline.set(deadline)  # this call's context only: each RPC has its own
        try:
            async with asyncio.timeout_at(deadline):
                return await behaviour(await _the_request(requests, context), context)
        except TimeoutError:
            if context.code() is not None:
                return None  # the deadline came while a status was being sent: it stands
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the call set no deadline, and the server's default ({deadline_seconds:g} s) "
            "passed: set a deadline (timeout) on the call",
        )

    return unary


async def _the_request(requests: AsyncIterator[Any], context: Context) -> Any:
    """A unary call's one message; what isn't one is answered here."""
    request = await anext(requests, None)
    if request is None:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "the call ended without its request message"
        )
    if isinstance(request, Undecodable):
        log.debug("%s", request.message)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    if isinstance(request, Refused):
        await context.abort(request.error.status_code, request.error.message)
    return request


def _checked_stream(behaviour: StreamBehaviour) -> StreamBehaviour:
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
