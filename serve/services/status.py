"""The one place exceptions become gRPC statuses, and deadlines become monotonic times."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc

from serve.batching import Call
from serve.errors import TorchgrpcError
from serve.services.metering import metered, note_failure

__all__ = [
    "Context",
    "call_of",
    "cancelled_status",
    "code_of",
    "deadline_of",
    "default_deadline",
    "rpc_errors",
    "status_of",
]

log = logging.getLogger(__name__)

# Our handlers never reach the request/response types through the context.
Context = grpc.aio.ServicerContext[Any, Any]
# The deadline the server gave a call whose client set none (``serve.services.mounting``), set in
# that call's own context.
default_deadline: ContextVar[float | None] = ContextVar("torchgrpc_default_deadline", default=None)
Service = TypeVar("Service")
Request = TypeVar("Request")
Response = TypeVar("Response")
UnaryHandler = Callable[[Service, Request, Context], Awaitable[Response]]
_OK = grpc.StatusCode.OK
_DEADLINE_SLACK = 0.05


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """Our errors carry their status; anything else is a bug: INTERNAL, logged with its trace."""
    code = code_of(error)
    note_failure(code)
    if isinstance(error, TorchgrpcError):
        return code, error.message
    log.error("unexpected error while serving a request", exc_info=error)
    return code, f"internal error ({type(error).__name__}); see the server log"


def code_of(error: BaseException) -> grpc.StatusCode:
    """The status ``error`` maps to (as ``status_of``, without logging it)."""
    return error.status_code if isinstance(error, TorchgrpcError) else grpc.StatusCode.INTERNAL


def cancelled_status(context: Context) -> grpc.StatusCode:
    """Why a call's handler was cancelled: its deadline passed, or its client gave up."""
    deadline = deadline_of(context)
    # gRPC cancels a call whose client deadline passes a few milliseconds before the server's
    # clock says so.
    if deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def rpc_errors(
    handler: UnaryHandler[Service, Request, Response],
) -> UnaryHandler[Service, Request, Response]:
    """Wraps a unary handler so every failure reaches the client as a precise status, and every
    inference request is metered."""

    @functools.wraps(handler)
    async def wrapper(self: Service, request: Request, context: Context) -> Response:
        request_metrics = metered(request)
        code = None  # until the handler ends; it doesn't when gRPC cancels it
        try:
            response = await handler(self, request, context)
            code = _OK
            return response
        except Exception as error:
            code, details = status_of(error)
        finally:
            if request_metrics is not None:
                request_metrics.done(code if code is not None else cancelled_status(context))
        # Outside the except block: abort() raises, and its exception must not be re-mapped.
        await context.abort(code, details)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def deadline_of(context: Context) -> float | None:
    """The call's deadline on the ``time.monotonic()`` clock: the client's, else the server's
    default for the call (``default_deadline``), else None."""
    remaining = context.time_remaining()
    return default_deadline.get() if remaining is None else time.monotonic() + remaining


def call_of(context: Context) -> Call:
    """A unary call: its deadline, and RESOURCE_EXHAUSTED at once when the queue is full."""
    return Call(deadline_of(context))
