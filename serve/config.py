"""Every setting the server has, defined once: typed, validated, with its --help line.

Everything else is derived from ``ServerConfig``'s fields (see ``serve.config_sources``): the
command line (``add_arguments``), the ``TORCHGRPC_<SETTING>`` environment variables, the keys of the
TOML file, ``python -m serve --print-config`` and docs/configuration.md (``make docs``), so a
setting is never retyped in a second place. Precedence, lowest first: defaults, TOML file,
environment, flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from export.catalog import DEFAULT_MODEL
from serve import config_sources
from serve.backend_choice import AUTO
from serve.backends import BACKENDS
from serve.batching import BatchingConfig
from serve.config_sources import ConfigError, Loaded
from serve.config_sources import setting as _setting
from serve.imaging import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    ImageLimits,
)

__all__ = [
    "DEFAULT_ARTIFACTS",
    "FREE_PORT",
    "LOOPBACK",
    "ServerConfig",
    "add_arguments",
    "load_config",
]

DEFAULT_ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# Listens on 127.0.0.1 and ::1: reachable from this machine only, which is the safe default.
LOOPBACK = "localhost"
AUTOMATIC = 0
# --metrics-port: 0 turns metrics off, this picks a free port (as --port 0 does).
FREE_PORT = -1
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
# The longest time a setting may give, in seconds: about 24 days.
MAX_SECONDS = (2**31 - 1) // 1000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _formats(text: str) -> frozenset[str]:
    return frozenset(name.upper() for name in _names(text))


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false (or yes/no, on/off, 1/0)")


@dataclass(frozen=True)
class ServerConfig:
    models: tuple[str, ...] = _setting(
        (),
        "models of the repository to load at start-up, comma-separated; the first is the "
        f"default model (of requests that name none). Empty: every model, {DEFAULT_MODEL} "
        "the default when present",
        _names,
        flags=("--model", "--models"),
    )
    backend: str = _setting(
        AUTO, f"{AUTO} (the fastest measured by `make compare`) or one of: {', '.join(BACKENDS)}"
    )
    host: str = _setting(LOOPBACK, "address to listen on; 'localhost' = 127.0.0.1 and ::1 only")
    port: int = _setting(50052, "port; 0 picks a free one")
    metrics_port: int = _setting(
        8002,
        "HTTP port, on --host, of the Prometheus metrics (/metrics) and KServe's HTTP health "
        f"paths (/v2/health/live, /v2/health/ready); 0 turns it off, {FREE_PORT} picks a free "
        "one; with --workers N, worker i listens on this port + i",
    )
    model_repository: Path = _setting(
        DEFAULT_ARTIFACTS,
        "the model repository: one folder per model, in Triton's layout (the export stage "
        "writes the built-in models there)",
        Path,
        flags=("--model-repository", "--artifacts"),
    )
    model_control: str = _setting(
        "none",
        "none: the start-up models, fixed; poll: reload models whose files change, load new "
        "ones, unload removed ones; explicit: RepositoryModelLoad/Unload requests do",
    )
    repository_poll_seconds: float = _setting(
        15.0, "with --model-control poll: seconds between two looks at the repository"
    )
    allow_python_factories: bool = _setting(
        False,
        "let models whose config names a Python factory (eager backend) run that code: only "
        "for repositories you trust",
        _boolean,
    )
    max_message_bytes: int = _setting(64 * 1024 * 1024, "largest request accepted, in bytes")
    max_pixels: int = _setting(DEFAULT_MAX_PIXELS, "largest image accepted, width x height")
    max_request_pixels: int = _setting(
        DEFAULT_MAX_REQUEST_PIXELS,
        "most pixels one request's images may add up to (read from their headers, before any "
        "is decoded)",
    )
    max_images_per_request: int = _setting(256, "most images one request may carry")
    exif_transpose: bool = _setting(
        True, "turn images upright by their EXIF orientation before pre-processing", _boolean
    )
    formats: frozenset[str] = _setting(DEFAULT_FORMATS, "image formats accepted", _formats)
    max_batch_size: int = _setting(
        AUTOMATIC, "most images run through the model at once; 0 = the backend's default"
    )
    max_queue_delay_ms: float = _setting(0.0, "wait up to this long for a fuller batch")
    max_queue_size: int = _setting(
        256,
        "most rows (images) per model admitted and not yet batched, those being decoded "
        "included: bounds memory (a 224x224 image is 0.6 MB decoded); beyond it a request gets "
        "RESOURCE_EXHAUSTED and a stream waits",
    )
    instances: int = _setting(AUTOMATIC, "model instances per model; 0 = the backend's default")
    threads: int = _setting(AUTOMATIC, "intra-op threads per instance; 0 = the backend's default")
    decode_threads: int = _setting(AUTOMATIC, "threads decoding images; 0 = one per core")
    tls_cert: Path | None = _setting(None, "PEM certificate chain: serve TLS", Path)
    tls_key: Path | None = _setting(None, "PEM private key for --tls-cert", Path)
    tls_client_ca: Path | None = _setting(
        None,
        "PEM certificates of the CAs that sign client certificates: mutual TLS, a client "
        "without a certificate signed by one of them is refused at the handshake (needs "
        "--tls-cert)",
        Path,
    )
    auth_token_file: Path | None = _setting(
        None,
        "file of accepted bearer tokens, one per line ('#' starts a comment); re-read on "
        "SIGHUP. Every RPC but grpc.health.v1's Check then needs 'authorization: Bearer <token>' "
        "metadata, or gets UNAUTHENTICATED",
        Path,
    )
    max_concurrent_rpcs: int = _setting(
        1024,
        "most RPCs (streams included) served at once by the server; more get "
        "RESOURCE_EXHAUSTED; bounds the memory that calls sending nothing can hold; "
        "0 = unlimited",
    )
    max_streams_per_connection: int = _setting(
        128,
        "most RPCs open at once on one client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_"
        "STREAMS): a gRPC client queues the rest, a raw HTTP/2 client is refused them",
    )
    default_deadline_seconds: float = _setting(
        60.0,
        "deadline of unary calls whose client set none (DEADLINE_EXCEEDED after it; streams "
        "have none); 0 = none",
    )
    keepalive_seconds: float = _setting(
        120.0,
        "ping a client connection that has been quiet this long, and close it when the ping "
        "goes unanswered for --keepalive-timeout-seconds: dead clients free their resources",
    )
    keepalive_timeout_seconds: float = _setting(20.0, "how long a keepalive ping may go unanswered")
    min_client_ping_seconds: float = _setting(
        10.0,
        "clients may ping at most this often (while calls are open; never without one): a "
        "client pinging faster is sent GOAWAY (too_many_pings) after two strikes",
    )
    max_connection_idle_seconds: float = _setting(
        900.0, "close a client connection that has had no call open this long; 0 = never"
    )
    max_connection_age_seconds: float = _setting(
        1800.0,
        "ask a client to reconnect (GOAWAY) once its connection is this old, so long-lived "
        "clients rebalance across replicas; calls open then may finish; 0 = never",
    )
    max_connection_age_grace_seconds: float = _setting(
        300.0,
        "how long calls open on a connection past --max-connection-age-seconds may go on "
        "before it is closed; 0 = as long as they last",
    )
    grace_seconds: float = _setting(5.0, "on shutdown, how long requests in flight may finish")
    ready_file: Path | None = _setting(None, "write the bound address here once serving", Path)
    workers: int = _setting(1, "server processes sharing the port (SO_REUSEPORT), for many cores")
    log_level: str = _setting(
        "INFO", f"one of {', '.join(LOG_LEVELS)}; DEBUG shows one line per request", str.upper
    )
    log_format: str = _setting(
        "text", "text (for people) or json (one JSON object per line, for log collectors)"
    )
    access_log: bool = _setting(
        False,
        "log one line per RPC (logger serve.access): request id, API, method, model, status, "
        "latency; the request id is the client's x-request-id metadata when given (and is "
        "returned in the trailers), else one made up",
        _boolean,
    )
    otlp_endpoint: str = _setting(
        "",
        "send OpenTelemetry traces (spans for each request and its decode, queue and compute "
        "stages) to this OTLP/gRPC collector, http://host:4317 say; needs the 'tracing' extra "
        "(pip install 'torchgrpc[tracing]'); empty: no tracing",
    )

    def __post_init__(self) -> None:
        # Each error names the settings it is about, so that the loader can say where their
        # values came from.
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ConfigError(
                f"unknown model control {self.model_control!r} "
                f"(known: {', '.join(MODEL_CONTROL_MODES)})",
                "model_control",
            )
        if self.model_control == "explicit" and self.workers > 1:
            # Each worker process has its own models; a load request reaches only one of them.
            raise ConfigError(
                "--model-control explicit needs --workers 1", "model_control", "workers"
            )
        if self.backend != AUTO and self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown backend {self.backend!r} (known: {', '.join(BACKENDS)})", "backend"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range", "port")
        if not FREE_PORT <= self.metrics_port <= 65536 - self.workers:
            raise ConfigError(
                f"metrics_port {self.metrics_port} is out of range", "metrics_port", "workers"
            )
        if self.metrics_port > 0 and self.port == self.metrics_port:
            raise ConfigError(
                f"port and metrics_port are both {self.port}: they must differ",
                "port",
                "metrics_port",
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together", "tls_cert", "tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "--tls-client-ca needs --tls-cert and --tls-key",
                "tls_client_ca",
                "tls_cert",
                "tls_key",
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"unknown log level {self.log_level!r} (known: {', '.join(LOG_LEVELS)})",
                "log_level",
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"unknown log format {self.log_format!r} (known: {', '.join(LOG_FORMATS)})",
                "log_format",
            )
        for name in (
            "max_concurrent_rpcs",
            "default_deadline_seconds",
            "max_connection_idle_seconds",
            "max_connection_age_seconds",
            "max_connection_age_grace_seconds",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off)", name)
        for setting in dataclasses.fields(self):
            value = getattr(self, setting.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{setting.name} must be a finite number", setting.name)
            if setting.name.endswith("_seconds") and value > MAX_SECONDS:
                # gRPC takes its times as milliseconds in a C int.
                raise ConfigError(f"{setting.name} must be at most {MAX_SECONDS:,}", setting.name)
        for name in (
            "repository_poll_seconds",
            "max_message_bytes",
            "max_pixels",
            "max_request_pixels",
            "max_images_per_request",
            "max_streams_per_connection",
            "keepalive_seconds",
            "keepalive_timeout_seconds",
            "min_client_ping_seconds",
            "workers",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive", name)
        for name in ("instances", "threads", "decode_threads", "max_batch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = automatic)", name)
        # The image limits and the batcher check their own settings: now, not at the first
        # request.
        try:
            self.image_limits  # noqa: B018
        except ValueError as error:
            raise ConfigError(str(error), "formats", "max_pixels", "max_request_pixels") from None
        try:
            self.batching(default_max_batch_size=1)
        except ValueError as error:
            raise ConfigError(str(error), "max_queue_delay_ms", "max_queue_size") from None

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_pixels=self.max_pixels,
            allowed_formats=self.formats,
            max_request_pixels=self.max_request_pixels,
            exif_transpose=self.exif_transpose,
        )

    def batching(self, default_max_batch_size: int) -> BatchingConfig:
        """The batcher's settings, with the backend's own batch size where none was given."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size or default_max_batch_size,
            max_queue_delay=self.max_queue_delay_ms / 1000,
            max_queue_size=self.max_queue_size,
        )

    @property
    def is_loopback(self) -> bool:
        return self.host in (LOOPBACK, "127.0.0.1", "::1", "[::1]")

    @property
    def decode_workers(self) -> int:
        return self.decode_threads or (os.cpu_count() or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per ServerConfig field, documented from the field itself, and --config."""
    config_sources.add_arguments(parser, ServerConfig)


def load_config(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Loaded[ServerConfig]:
    """The config of ``args`` (parsed by a parser given ``add_arguments``), over ``environ``'s
    TORCHGRPC_* variables (none when omitted) and the TOML file, with each value's source.

    Raises ``ConfigError``: one line naming the setting at fault and where its value came from.
    """
    return config_sources.load(ServerConfig, args, environ or {})
