"""One exception tree for the whole server; each class carries the gRPC status it maps to.

Everything below the wire adapters raises these; only ``serve.services.status`` turns them into
``context.abort(code, details)``, in one place. Anything that is not a ``TorchgrpcError`` is a bug
and becomes INTERNAL. The clients raise the same classes from a failed call's status.
"""

from __future__ import annotations

import grpc

__all__ = [
    "START_UP_ERRORS",
    "ArtifactError",
    "BatchError",
    "DeadlineExpired",
    "FailedPrecondition",
    "ImageError",
    "InvalidArgument",
    "ModelNotFound",
    "RepositoryError",
    "ResourceExhausted",
    "ServerUnavailable",
    "TorchgrpcError",
    "Unauthenticated",
    "error_from_status",
    "shortened",
]

# Names chosen by clients are echoed in messages only this long: a message stays readable and
# small whatever a client sends.
_ECHO_LENGTH = 64


def shortened(name: str) -> str:
    """``name`` for an error message: at most ``_ECHO_LENGTH`` characters, quoted."""
    text = name if len(name) <= _ECHO_LENGTH else name[: _ECHO_LENGTH - 1] + "…"
    return repr(text)


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
    """No such model, or no such version of it."""

    status_code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(TorchgrpcError):
    """The model can't serve this API: an image API on a model without an image input, say."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(TorchgrpcError):
    """A limit was hit (queue full, message or image too large): retry later or send less."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerUnavailable(TorchgrpcError):
    """The server is shutting down or not ready; a client may retry elsewhere."""

    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExpired(TorchgrpcError):
    """The request's deadline passed before its work was done; the work was dropped."""

    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(TorchgrpcError):
    """The call carries no token, or one the server doesn't accept (``--auth-token-file``)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class BatchError(TorchgrpcError):
    """The model failed on a batch; every request in it gets this, the server goes on."""


class ArtifactError(TorchgrpcError):
    """A model's files are missing or stale; the message names the command that fixes it."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


_BY_STATUS: dict[grpc.StatusCode, type[TorchgrpcError]] = {
    cls.status_code: cls
    for cls in (
        InvalidArgument,
        ModelNotFound,
        FailedPrecondition,
        ResourceExhausted,
        ServerUnavailable,
        DeadlineExpired,
        Unauthenticated,
    )
}


def error_from_status(code: grpc.StatusCode, details: str) -> TorchgrpcError:
    """The client side of the mapping: a failed call's status as the matching exception."""
    cls = _BY_STATUS.get(code)
    if cls is not None:
        return cls(details)
    error = TorchgrpcError(f"{code.name}: {details}")
    error.status_code = code
    return error


# What stops a server from starting (or running): reported as one line, not a traceback.
START_UP_ERRORS = (TorchgrpcError, OSError, RuntimeError, TimeoutError)


class RepositoryError(ArtifactError):
    """A model of the repository can't be used: the message names the file and, for a
    config.pbtxt, the field (``models/resnet/config.pbtxt: max_batch_size: must be >= 0, not -1``).

    ``file`` may carry a position (``config.pbtxt:3:7``) when the text itself doesn't parse.
    """

    def __init__(self, file: str, reason: str, field: str = "") -> None:
        super().__init__(f"{file}: {field}: {reason}" if field else f"{file}: {reason}")
        self.file = file
        self.field = field
        self.reason = reason
