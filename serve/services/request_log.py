"""Request ids, access lines and traces: one interceptor, outermost, around every RPC's handler.

An RPC's request id is the client's ``x-request-id`` metadata (shortened, and made printable: it
is logged and sent back), else, when access lines (``--access-log``) or traces
(``--otlp-endpoint``) are on, a new one; it is returned in the trailers, also with an error
status (``context.abort`` sends the trailing metadata set before it). An access line (logger
``serve.access``) is written when the handler ends, with the status it ended with, and the model
and version its inference requests named; a stream's line has the number of its inference
requests (its items). With both off, an RPC whose client sent no id gets its handler untouched:
the cheapest path, as it is every RPC's.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from serve.config import ServerConfig
from serve.services.metering import API_OF_SERVICE, RequestNames, note_names
from serve.services.status import Context, cancelled_status
from serve.tracing import RpcTracer, TracedRpc, rpc_tracer, traced_rpc

__all__ = ["REQUEST_ID", "RequestLog", "request_log_interceptors"]

REQUEST_ID = "x-request-id"
# Long enough for any id scheme in use (a UUID is 36 characters, a W3C trace id 32).
MAX_ID_LENGTH = 128
# The models (and the versions) a call named are logged and traced at most this long.
_MAX_NAMES_LENGTH = 256
# What a logged or returned value may hold: visible ASCII, so that a value can't break a log
# line, forge another, or be refused as metadata.
_NOT_VISIBLE = re.compile(r"[^\x21-\x7e]")
_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

access_log = logging.getLogger("serve.access")

# grpc's classes are generic only in grpc-stubs: subscripted for mypy, bare at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def request_log_interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    tracer = rpc_tracer(config.otlp_endpoint) if config.otlp_endpoint else None
    return [RequestLog(access_log=config.access_log, tracer=tracer)]


class RequestLog(_Interceptor):
    """Gives each RPC its request id, and logs and traces it when asked to."""

    def __init__(self, *, access_log: bool, tracer: RpcTracer | None) -> None:
        self._access_log = access_log
        self._tracer = tracer
        self._observed = access_log or tracer is not None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        metadata = details.invocation_metadata
        given = _given_id(metadata)
        if handler is None or (given is None and not self._observed):
            return handler
        rpc = _Rpc(
            details.method,
            given or uuid.uuid4().hex,
            time.perf_counter_ns(),  # before the request is read: its reading counts
            stream=handler.request_streaming and handler.response_streaming,
            logged=self._access_log,
            tracer=self._tracer,
            metadata=metadata,
        )
        return _wrapped(handler, rpc)


def _given_id(metadata: Any) -> str | None:
    """The client's request id, made fit to log and return; None when it sent none (or an empty
    one)."""
    for key, value in metadata or ():
        if key == REQUEST_ID and isinstance(value, str):
            return _visible(value, MAX_ID_LENGTH) or None
    return None


def _visible(text: str, limit: int) -> str:
    return _NOT_VISIBLE.sub("_", text[:limit])


class _Rpc:
    """One RPC being served: its id, and what its access line and span say."""

    __slots__ = (
        "_logged",
        "_metadata",
        "_method",
        "_names",
        "_peer",
        "_request_id",
        "_started_ns",
        "_stream",
        "_traced",
        "_tracer",
    )

    def __init__(
        self,
        method: str,
        request_id: str,
        started_ns: int,
        *,
        stream: bool,
        logged: bool,
        tracer: RpcTracer | None,
        metadata: Any,
    ) -> None:
        self._method = method
        self._request_id = request_id
        self._started_ns = started_ns
        self._stream = stream
        self._logged = logged
        self._tracer = tracer
        # Where its parent span is named; binary values (keys ending in -bin) name none.
        self._metadata: dict[str, str] = (
            {}
            if tracer is None
            else {key: value for key, value in metadata or () if isinstance(value, str)}
        )
        # None: only the id was asked for.
        self._names = RequestNames() if logged or tracer is not None else None
        self._traced: TracedRpc | None = None
        self._peer = ""

    def begin(self, context: Context) -> None:
        """As the handler starts, in the RPC's own task: every variable set here is the RPC's
        alone (grpc.aio serves each RPC in a task of its own) and ends with it."""
        context.set_trailing_metadata(((REQUEST_ID, self._request_id),))
        if self._logged:
            # Asked now: a response generator the call abandoned ends after the call is gone,
            # and with it its peer.
            self._peer = context.peer()
        if self._names is not None:
            note_names(self._names)
        if self._tracer is not None:
            self._traced = self._tracer.start(self._method, self._metadata, self._started_ns)
            traced_rpc.set(self._traced)

    def end(self, context: Context, error: BaseException | None) -> None:
        """As the handler ends, with ``error`` if it raised."""
        if self._names is None:
            return
        ended_ns = time.perf_counter_ns()
        code = _status(context, error)
        named = self._names.joined()
        if named is not None:
            named = (_visible(named[0], _MAX_NAMES_LENGTH), _visible(named[1], _MAX_NAMES_LENGTH))
        if self._traced is not None:
            self._traced.end(code.name, code.value[0], named, ended_ns)
        if self._logged and access_log.isEnabledFor(logging.INFO):
            self._log(code, ended_ns - self._started_ns, named)

    def _log(
        self,
        code: grpc.StatusCode,
        elapsed_ns: int,
        named: tuple[str, str] | None,
    ) -> None:
        service = self._method[1:].partition("/")[0]
        latency_ms = round(elapsed_ns / 1e6, 3)
        fields: dict[str, object] = {
            "request_id": self._request_id,
            "api": API_OF_SERVICE.get(service, "other"),
        }
        if named is not None:
            fields["model"], fields["version"] = named
        if self._stream and self._names is not None:
            fields["items"] = self._names.count
        if self._traced is not None:
            fields["trace_id"] = self._traced.trace_id
        fields["peer"] = self._peer
        # A text line holds every field in its message; a JSON line has each as a key too.
        access_log.info(
            "%s %s %.3f ms %s",
            self._method,
            code.name,
            latency_ms,
            " ".join(f"{key}={value}" for key, value in fields.items()),
            extra={"method": self._method, "status": code.name, "latency_ms": latency_ms} | fields,
        )


def _status(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status a handler ended the call with, raising ``error`` (or None)."""
    # GeneratorExit: the call ended (its client gone, say) before reading all the responses.
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return cancelled_status(context)
    # What abort() or set_code() set, if anything.
    code: grpc.StatusCode | None = context.code()
    if error is None or isinstance(error, grpc.aio.AbortError):
        if code is None and context.cancelled():
            # A stream whose client cancelled may see its requests end rather than be cancelled.
            return cancelled_status(context)
        return code or grpc.StatusCode.OK
    # Any other exception: gRPC answers UNKNOWN unless the handler set a failure code first.
    return code if code not in (None, grpc.StatusCode.OK) else grpc.StatusCode.UNKNOWN


def _wrapped(handler: Any, rpc: _Rpc) -> Handler:
    """``handler`` with its behaviour, whatever its shape, run between ``rpc.begin`` and
    ``rpc.end``."""
    for shape in _BEHAVIOURS:
        behaviour = getattr(handler, shape)
        if behaviour is not None:
            wrapped: Handler = handler._replace(**{shape: _around(behaviour, rpc)})
            return wrapped
    return handler  # type: ignore[no-any-return]


def _around(behaviour: Callable[..., Any], rpc: _Rpc) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
            rpc.begin(context)
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as error:
                rpc.end(context, error)
                raise
            rpc.end(context, None)

        return responses
    if inspect.iscoroutinefunction(behaviour):

        async def response(request: Any, context: Context) -> Any:
            rpc.begin(context)
            try:
                answer = await behaviour(request, context)
            except BaseException as error:
                rpc.end(context, error)
                raise
            rpc.end(context, None)
            return answer

        return response
    return behaviour  # synchronous (none of ours): served as it is, without the id
