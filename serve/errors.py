"""One exception tree for the server; each class carries the gRPC status it maps to.

The core raises these; only the wire adapters (``serve.services``) turn them into
``context.abort(code, details)``, in one place. Anything that is not a ``TorchgrpcError`` is a bug
and becomes INTERNAL.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ImageError",
    "InvalidArgument",
    "ModelNotFound",
    "ResourceExhausted",
    "ServerUnavailable",
    "TorchgrpcError",
    "error_from_status",
]


class TorchgrpcError(Exception):
    """Base class: a failure of one request, reported to its caller with ``status_code``."""

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TorchgrpcError):
    """The request itself is wrong: empty, out of range, or malformed."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class ImageError(InvalidArgument):
    """One image of a request can't be used; the message names which one (0-based index)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image {index}: {reason}")
        self.index = index
        self.reason = reason


class ModelNotFound(TorchgrpcError):
    status_code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(TorchgrpcError):
    """A limit was hit (queue full, message or image too large): retry later or send less."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerUnavailable(TorchgrpcError):
    """The server is shutting down or not ready; a client may retry elsewhere."""

    status_code = grpc.StatusCode.UNAVAILABLE


_BY_STATUS: dict[grpc.StatusCode, type[TorchgrpcError]] = {
    cls.status_code: cls
    for cls in (InvalidArgument, ModelNotFound, ResourceExhausted, ServerUnavailable)
}


def error_from_status(code: grpc.StatusCode, details: str) -> TorchgrpcError:
    """The client side of the mapping: a failed call's status as the matching exception."""
    cls = _BY_STATUS.get(code)
    if cls is not None:
        return cls(details)
    error = TorchgrpcError(f"{code.name}: {details}")
    error.status_code = code
    return error
