"""Clients for code: ``Client`` (blocking) and ``AsyncClient`` (asyncio), one shared core.

Both speak torchgrpc.v1.Classifier, over TLS and with a token when given a ``ChannelSecurity``.
Failures raise ``serve.errors`` exceptions that carry the server's status and message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import grpc

from serve.client.channels import PLAINTEXT, ChannelSecurity, open_aio_channel, open_channel
from serve.errors import TorchgrpcError, error_from_status
from serve.fronts.classification import Label
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc

__all__ = ["DEFAULT_SERVER", "AsyncClient", "Client", "ImageInput", "Result"]

DEFAULT_SERVER = "localhost:50052"
DEFAULT_TIMEOUT = 60.0


class _SavesImages(Protocol):
    """A PIL image, without importing Pillow for callers that only send bytes."""

    format: str | None

    def save(self, fp: Any, format: str | None = ...) -> None: ...


ImageInput = str | Path | bytes | _SavesImages
Result = list[list[Label]]


def image_bytes(image: ImageInput) -> bytes:
    """Encoded bytes for a path, bytes, or a PIL image (sent as PNG: lossless)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _request(images: Iterable[ImageInput], top_k: int, model: str) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(images=[image_bytes(i) for i in images], top_k=top_k, model=model)


def _result(response: pb.ClassifyResponse) -> Result:
    return [
        [Label(label.class_id, label.name, label.probability) for label in item.labels]
        for item in response.classifications
    ]


def _error(error: grpc.RpcError) -> TorchgrpcError:
    return error_from_status(error.code(), error.details() or "")


class Client:
    """Blocking client: ``with Client() as c: c.classify(["cat.jpg"], top_k=5)``."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._channel = open_channel(server, security)
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._timeout = timeout
        self.last_round_trip = 0.0

    def classify(self, images: Sequence[ImageInput], *, top_k: int = 5, model: str = "") -> Result:
        request = _request(images, top_k, model)
        started = time.perf_counter()
        try:
            response = self._stub.Classify(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise _error(error) from None
        self.last_round_trip = time.perf_counter() - started
        return _result(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """asyncio client: ``async with AsyncClient() as c: await c.classify([...])``."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        self._channel = open_aio_channel(server, security)
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._timeout = timeout

    async def classify(
        self, images: Sequence[ImageInput], *, top_k: int = 5, model: str = ""
    ) -> Result:
        try:
            response = await self._stub.Classify(
                _request(images, top_k, model), timeout=self._timeout
            )
        except grpc.RpcError as error:
            raise _error(error) from None
        return _result(response)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
