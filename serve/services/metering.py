"""Which RPCs are inference requests, for the request metrics and the access log: their API, the
model they name.

``rpc_errors`` (unary calls) and ``serve_stream`` (each stream item) report every inference
request to the server's ``RequestMeter``. The meter is found in a context variable that
``Server.start`` sets while it starts gRPC: every RPC's task inherits the context of the task
that serves the port, so each server's requests reach its own meter, and a server without
metrics has none. An RPC that is logged or traced (``request_log``) has ``RequestNames`` in a
context variable of its own task, where its requests are noted too. A request on a server with
neither costs two ``ContextVar.get``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from typing import Any

import grpc

from serve.metrics import RequestMeter
from serve.pb import inference_pb2
from serve.pb.kserve import grpc_service_pb2 as kserve_pb2
from serve.pb.torchgrpc.v1 import classifier_pb2

__all__ = [
    "API_OF_SERVICE",
    "Metered",
    "RequestNames",
    "item_context",
    "metered",
    "metering",
    "note_failure",
    "note_names",
    "noted_failure",
]

_meter: ContextVar[RequestMeter | None] = ContextVar("torchgrpc_request_meter", default=None)
_names: ContextVar[RequestNames | None] = ContextVar("torchgrpc_request_names", default=None)
# The status a stream item's answer reports its failure with (its task runs in a context of its
# own): set by ``status_of``.
_failure: ContextVar[grpc.StatusCode | None] = ContextVar("torchgrpc_failure", default=None)

# By request message type: the API, and the model and version the request names.
_INFERENCE: dict[type[Any], tuple[str, Callable[[Any], tuple[str, str]]]] = {
    inference_pb2.InferenceRequest: ("tutorial", lambda request: ("", "")),
    classifier_pb2.ClassifyRequest: ("classifier", lambda request: (request.model, "")),
    classifier_pb2.ClassifyStreamRequest: ("classifier", lambda request: (request.model, "")),
    kserve_pb2.ModelInferRequest: (
        "kserve",
        lambda request: (request.model_name, request.model_version),
    ),
}
# The API each service belongs to, by its full name (as in a method's path).
API_OF_SERVICE = {
    inference_pb2.DESCRIPTOR.services_by_name["InferenceServer"].full_name: "tutorial",
    classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name: "classifier",
    kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name: "kserve",
}
# A stream's items may each name a model: the first few different ones are kept.
_MOST_NAMED = 4


@contextmanager
def metering(meter: RequestMeter) -> Iterator[None]:
    """RPCs whose serving starts inside this block report to ``meter``."""
    token = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(token)


class Metered:
    """One inference request being served."""

    __slots__ = ("_api", "_meter", "_model", "_started", "_version")

    def __init__(self, meter: RequestMeter, api: str, model: str, version: str) -> None:
        self._meter = meter
        self._api = api
        self._model = model
        self._version = version
        meter.begin(api)
        self._started = time.perf_counter_ns()

    def done(self, code: grpc.StatusCode) -> None:
        elapsed_ns = time.perf_counter_ns() - self._started
        # ``_name_``: the member's name, without the cost of the ``name`` property.
        self._meter.end(self._api, self._model, self._version, code._name_, elapsed_ns)


class RequestNames:
    """The inference requests one RPC carried (one, or a stream's items): how many, and the
    models and versions they named (empty: the server's default), in the order first named."""

    __slots__ = ("count", "named")

    def __init__(self) -> None:
        self.count = 0
        self.named: list[tuple[str, str]] = []

    def add(self, model: str, version: str) -> None:
        self.count += 1
        if len(self.named) < _MOST_NAMED and (model, version) not in self.named:
            self.named.append((model, version))

    def joined(self) -> tuple[str, str] | None:
        """The models named and the versions named, each a comma-separated list of the
        different ones (a stream's items may differ); None when there was no request."""
        if not self.count:
            return None
        models = dict.fromkeys(model for model, _ in self.named)
        versions = dict.fromkeys(version for _, version in self.named)
        return ",".join(models), ",".join(versions)


def note_names(names: RequestNames) -> None:
    """The inference requests served from now on in this context (an RPC's task, and the tasks
    it starts) are noted in ``names``."""
    _names.set(names)


def metered(request: object) -> Metered | None:
    """``request``, now begun, when it is an inference request on a server with metrics; noted
    in the RPC's ``RequestNames`` when it has some."""
    meter = _meter.get()
    names = _names.get()
    if meter is None and names is None:
        return None
    kind = _INFERENCE.get(type(request))
    if kind is None:
        return None
    api, names_of = kind
    model, version = names_of(request)
    if names is not None:
        names.add(model, version)
    return None if meter is None else Metered(meter, api, model, version)


def note_failure(code: grpc.StatusCode) -> None:
    """Records, in the current context, that the request served there failed with ``code``."""
    _failure.set(code)


def item_context() -> Context:
    """A context of its own for a stream item's task, where ``note_failure`` is noted."""
    context = copy_context()
    context.run(_failure.set, None)
    return context


def noted_failure(context: Context) -> grpc.StatusCode | None:
    return context.get(_failure)
