"""OpenTelemetry traces (``--otlp-endpoint``): a server span for each RPC, and the stages of each
inference request it carries.

A server span's parent is the caller's, read from the request's W3C ``traceparent`` and
``tracestate`` metadata. Each inference request (each item of a stream) adds an ``infer`` span,
its time in the batcher, holding ``decode``, ``queue`` and ``compute`` spans laid out end to end
from the durations ``Batcher.infer`` measures. OpenTelemetry is imported only once tracing is
asked for: the server runs without the ``tracing`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

__all__ = ["RpcTracer", "TracedRpc", "install", "rpc_tracer", "traced_rpc"]

_INSTALL_HINT = "pip install 'torchgrpc[tracing]'"

# The RPC served in this context, when it is traced: ``Batcher.infer`` adds its requests' stages.
traced_rpc: ContextVar[TracedRpc | None] = ContextVar("torchgrpc_traced_rpc", default=None)

# Statuses that make a server span an error, as OpenTelemetry's conventions for gRPC servers
# say: the others (NOT_FOUND, INVALID_ARGUMENT...) are answers to the client's mistakes.
_SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)

_installed: TracerProvider | None = None
# By endpoint: one exporter per process, however many servers it starts.
_providers: dict[str, TracerProvider] = {}


def install(provider: TracerProvider | None) -> None:
    """Servers started from now on send their spans to ``provider`` (one with an in-memory
    exporter, in tests) instead of the collector ``--otlp-endpoint`` names; None undoes it."""
    global _installed
    _installed = provider


def rpc_tracer(endpoint: str) -> RpcTracer:
    """The tracer of a server whose spans go to the OTLP/gRPC collector at ``endpoint``.
    RuntimeError, naming the extra to install, when OpenTelemetry isn't installed."""
    provider = _installed or _providers.get(endpoint)
    if provider is None:
        provider = _providers[endpoint] = _otlp_provider(endpoint)
    return RpcTracer(provider.get_tracer("torchgrpc"))


def _otlp_provider(endpoint: str) -> TracerProvider:
    """Spans batched and sent from a thread of their own. The SDK shuts the provider down at
    exit, which sends the spans still waiting."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise RuntimeError(f"--otlp-endpoint needs OpenTelemetry: {_INSTALL_HINT}") from None
    # OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the service when set.
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "torchgrpc"}))
    provider = TracerProvider(resource=resource)
    # http:// means no TLS, https:// TLS (the exporter reads the scheme).
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class RpcTracer:
    """Starts the server span of each RPC of one server."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        # Kept, so that serving a request imports nothing.
        self._extract = TraceContextTextMapPropagator().extract
        self._in_context = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._error = trace.Status(trace.StatusCode.ERROR)

    def start(self, method: str, metadata: Mapping[str, str], started_ns: int) -> TracedRpc:
        """The span of a call of ``method`` (``/package.Service/Method``) that arrived at
        ``started_ns`` (``time.perf_counter_ns()``), its parent the caller's span that
        ``metadata`` names (else none: a trace of its own)."""
        # Spans take times since the epoch; the stages are measured on perf_counter_ns.
        epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        name = method.lstrip("/")
        service, _, rpc = name.partition("/")
        span = self._tracer.start_span(
            name,
            context=self._extract(metadata),
            kind=self._server,
            start_time=started_ns + epoch_offset_ns,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc},
        )
        return TracedRpc(self, span, epoch_offset_ns)

    def child(self, name: str, parent: Span, start_ns: int, end_ns: int) -> Span:
        """A span of ``parent``'s, begun and ended (times since the epoch)."""
        span = self._tracer.start_span(name, context=self._in_context(parent), start_time=start_ns)
        span.end(end_ns)
        return span

    def fail(self, span: Span) -> None:
        span.set_status(self._error)


class TracedRpc:
    """One RPC's server span, and the spans of its inference requests' stages inside it."""

    __slots__ = ("_offset_ns", "_span", "_tracer")

    def __init__(self, tracer: RpcTracer, span: Span, epoch_offset_ns: int) -> None:
        self._tracer = tracer
        self._span = span
        self._offset_ns = epoch_offset_ns

    @property
    def trace_id(self) -> str:
        """As W3C trace context writes it: 32 hex digits."""
        return format(self._span.get_span_context().trace_id, "032x")

    def add_stages(
        self, started_ns: int, decode_ns: int, queue_ns: int, compute_ns: int, ended_ns: int
    ) -> None:
        """An inference request that spent ``started_ns`` to ``ended_ns`` (perf_counter_ns) in
        the batcher: its ``infer`` span, and its stages in order inside it (the hand-offs between
        them are not measured, so the stages may end before the request does)."""
        at = started_ns + self._offset_ns
        end = ended_ns + self._offset_ns
        tracer = self._tracer
        infer = tracer.child("infer", self._span, at, end)
        for name, duration in (("decode", decode_ns), ("queue", queue_ns), ("compute", compute_ns)):
            stage_end = min(at + duration, end)
            tracer.child(name, infer, at, stage_end)
            at = stage_end

    def end(self, code: str, code_value: int, named: tuple[str, str] | None, ended_ns: int) -> None:
        """Ends the span at ``ended_ns`` (perf_counter_ns) with the call's status (its name and
        number); ``named``: the model and version its inference requests named (None: it
        carried none)."""
        span = self._span
        span.set_attribute("rpc.grpc.status_code", code_value)
        if named is not None:
            span.set_attribute("model", named[0])
            span.set_attribute("model.version", named[1])
        if code in _SERVER_ERRORS:
            self._tracer.fail(span)
        span.end(ended_ns + self._offset_ns)
