"""Bearer tokens: the token file (``--auth-token-file``), and the interceptor that refuses every
RPC without one of its tokens (grpc.health.v1's Check excepted: probes carry no token).

The file holds one token per line; blank lines and lines starting with ``#`` are skipped. A
client sends ``authorization: Bearer <token>`` metadata; a missing, malformed or unknown token is
refused with UNAUTHENTICATED before the request is read, whatever the method.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from serve.errors import Unauthenticated

__all__ = ["EXEMPT_METHOD", "EXEMPT_SERVICE", "TokenAuth", "read_tokens"]

log = logging.getLogger("serve")

# Liveness and readiness probes (kubelet, load balancers) can't be given a token. Only Check:
# Watch streams last as long as their clients like, and without a token anyone could fill the
# server's --max-concurrent-rpcs with them (a gRPC client's own health checking sends its token).
EXEMPT_SERVICE = "grpc.health.v1.Health"
EXEMPT_METHOD = f"/{EXEMPT_SERVICE}/Check"
_SCHEME = "bearer"

# grpc's classes are generic only in grpc-stubs: subscripted for mypy, bare at run time.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def read_tokens(path: Path) -> list[str]:
    """The tokens of ``path``, in order; OSError naming the file when it can't be read, holds no
    token, or has a line that can't be one (the message never shows a token)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise OSError(f"token file {path}: {reason}") from None
    tokens = []
    for number, line in enumerate(text.splitlines(), start=1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        # gRPC metadata values are printable ASCII, and a space ends the token in the header.
        if not (token.isascii() and token.isprintable()) or len(token.split()) > 1:
            raise OSError(f"token file {path}, line {number}: a token is one word of ASCII")
        tokens.append(token)
    if not tokens:
        raise OSError(f"token file {path} holds no token (one per line; '#' starts a comment)")
    return tokens


def _digest(token: str) -> bytes:
    # Compared as SHA-256 digests: hmac.compare_digest takes the same time for any two strings
    # of one length, so digests (all 32 bytes) don't tell a caller the length of a token either.
    return hashlib.sha256(token.encode()).digest()


def _refusal(message: str) -> Handler:
    """A handler that answers UNAUTHENTICATED with ``message``. Stream-unary whatever the
    method's shape: gRPC then hands it the request stream unread, so nothing sent is decoded."""
    error = Unauthenticated(message)

    async def refuse(requests: AsyncIterator[Any], context: Context) -> None:
        await context.abort(error.status_code, error.message)

    return grpc.stream_unary_rpc_method_handler(refuse)


_MISSING = _refusal("this server needs a token: send 'authorization: Bearer <token>' metadata")
_MALFORMED = _refusal("the authorization metadata is not 'Bearer <token>'")
_UNKNOWN = _refusal("the token is not accepted by this server")


class TokenAuth(_Interceptor):
    """Holds the accepted tokens (as digests) and checks each RPC's; ``reload()`` re-reads the
    file. Constructing it reads the file: an unusable file stops start-up (OSError)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._digests = self._read()

    def _read(self) -> tuple[bytes, ...]:
        return tuple(_digest(token) for token in read_tokens(self.path))

    def reload(self) -> None:
        """Re-reads the file (SIGHUP). A file that became unreadable or empty keeps the tokens in
        use, with an error logged: a slip while editing it must not lock every client out."""
        try:
            digests = self._read()
        except OSError as error:
            log.error("%s; still accepting the %d token(s) read before", error, len(self._digests))
            return
        self._digests = digests
        log.info("token file %s re-read: %d token(s) accepted", self.path, len(digests))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        if handler_call_details.method == EXEMPT_METHOD:
            return await continuation(handler_call_details)
        refusal = self._refusal(handler_call_details.invocation_metadata)
        if refusal is not None:
            return refusal
        return await continuation(handler_call_details)

    def _refusal(self, metadata: grpc.Metadata | None) -> Handler | None:
        """None when the call's first ``authorization`` entry holds an accepted token."""
        value = next((v for k, v in metadata or () if k == "authorization"), None)
        if value is None:
            return _MISSING
        if not isinstance(value, str):  # only a "-bin" key carries bytes
            return _MALFORMED
        scheme, _, token = value.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token:
            return _MALFORMED
        digest = _digest(token)
        accepted = False
        for known in self._digests:  # every one, no early exit: the time says nothing
            accepted |= hmac.compare_digest(known, digest)
        return None if accepted else _UNKNOWN
