"""The server's lifecycle: load models, listen, serve, and shut down in a written order.

``async with Server(config) as server`` starts it and yields it (``server.port`` is the bound
port, ``server.metrics_port`` the metrics listener's), and is what tests and embedding code use;
``serve()`` runs until ``stop()`` is called; ``run()`` is the only place that creates an event
loop and installs signal handlers (``python -m serve``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serve.auth import TokenAuth
from serve.config import FREE_PORT, LOOPBACK, ServerConfig
from serve.core import InferenceCore
from serve.metrics import ServerMetrics
from serve.model_control import ModelControl
from serve.services import WireService
from serve.services.classifier import ClassifierService
from serve.services.kserve import KServeService
from serve.services.metering import metering
from serve.services.mounting import WireLimits, mount, transport_message_bytes
from serve.services.reflection import enable_reflection
from serve.services.request_log import request_log_interceptors
from serve.services.tutorial import TutorialService

__all__ = ["MODEL_HEALTH_PREFIX", "Server", "run", "write_atomically"]

log = logging.getLogger("serve")

# grpc.health.v1 has a service name per model: "model/<name>" (no model name holds a "/").
MODEL_HEALTH_PREFIX = "model/"


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self.addresses: list[str] = []
        # The metrics listener's port (0 while it is off) and addresses.
        self.metrics_port = 0
        self.metrics_addresses: list[str] = []
        self._decode_pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="decode")
        self._grpc: grpc.aio.Server | None = None
        self._core: InferenceCore | None = None
        self._control: ModelControl | None = None
        self._metrics: ServerMetrics | None = None
        # The accepted bearer tokens (--auth-token-file), from start(); None: no token needed.
        self._auth: TokenAuth | None = None
        # Tasks started and not awaited (health updates, a forced stop): referenced until done.
        self._background: set[asyncio.Future[None]] = set()
        self._health = health_aio.HealthServicer()
        self._stop_requested = asyncio.Event()
        # A second stop request cut the grace period short.
        self._forced = False
        # Ready from the moment every model is loaded and the port is bound, until shutdown.
        self._ready = False

    @property
    def core(self) -> InferenceCore:
        if self._core is None:
            raise RuntimeError("the server is not started")
        return self._core

    @property
    def control(self) -> ModelControl:
        if self._control is None:
            raise RuntimeError("the server is not started")
        return self._control

    async def start(self) -> None:
        """Opens the metrics listener (live, not ready), loads the start-up models (off the loop),
        binds, and reports SERVING once requests can run."""
        # The security files and the tracing set-up come first: a wrong one fails in a moment,
        # not after the models.
        credentials = self._credentials()
        if self.config.auth_token_file is not None:
            self._auth = TokenAuth(self.config.auth_token_file)
        request_log = request_log_interceptors(self.config)
        self._control = ModelControl(self.config, self._decode_pool, self._model_health)
        if self.config.metrics_port:
            await self._listen_for_metrics(ServerMetrics(self._control.table, self.is_ready))
        await self._control.start()
        self._core = InferenceCore(self._control.table)
        self._grpc = grpc.aio.server(
            options=self._grpc_options(),
            maximum_concurrent_rpcs=self.config.max_concurrent_rpcs or None,
            interceptors=[*request_log, *self._auth_interceptors()],
        )
        services: list[WireService] = [
            TutorialService(self._core),
            ClassifierService(self._core),
            KServeService(self._core, self._control, self.is_ready),
        ]
        limits = WireLimits(self.config.max_message_bytes, self.config.default_deadline_seconds)
        for service in services:
            service.register(self._grpc, limits)
        # Mounted as ours are: a probe's Check that never sends its message ends at the default
        # deadline instead of holding a call (Check needs no token).
        mount(health_pb2_grpc.add_HealthServicer_to_server, self._health, self._grpc, limits)
        names = [s.SERVICE_NAME for s in services]
        enable_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], self._grpc
        )
        self._bind(self._grpc, credentials)
        if self._metrics is None:
            await self._grpc.start()
        else:
            with metering(self._metrics.requests):  # every RPC's task inherits the meter
                await self._grpc.start()
        for name in ["", *names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for status in await self._control.index():
            self._model_health(status.name, self._control.table.is_ready(status.name))
        self._ready = True
        self._announce()

    def is_ready(self) -> bool:
        return self._ready

    def _auth_interceptors(self) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
        # After the request log's (outermost): a refused call is logged like any other. None at
        # all without a token file: an interceptor costs every RPC a coroutine.
        return [] if self._auth is None else [self._auth]

    def reload_tokens(self) -> None:
        """Re-reads --auth-token-file (SIGHUP); a file that can't be used keeps the tokens in use.
        Before start() it does nothing: start() reads the file as it is then."""
        if self._auth is not None:
            self._auth.reload()

    async def _listen_for_metrics(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        port = self.config.metrics_port
        await metrics.listen(_hosts(self.config), 0 if port == FREE_PORT else port)
        self.metrics_port, self.metrics_addresses = metrics.port, metrics.addresses

    def _model_health(self, name: str, ready: bool) -> None:
        """Called on the event loop whenever a model's readiness may have changed."""
        statuses = health_pb2.HealthCheckResponse
        status = statuses.SERVING if ready else statuses.NOT_SERVING
        # HealthServicer.set only records the status and tells watchers: a task, run in order.
        task = asyncio.ensure_future(self._health.set(MODEL_HEALTH_PREFIX + name, status))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """NOT_SERVING first (probes steer traffic away), then stop accepting and drain within the
        grace period, then unload the models, then close the metrics listener (which answers
        not ready meanwhile). Safe after a failed or partial start."""
        self._ready = False
        if self._grpc is not None:
            await self._health.enter_graceful_shutdown()
            await self._grpc.stop(self.config.grace_seconds)
            self._grpc = None
        if self._control is not None:
            await self._control.close()
            self._control = None
            self._core = None
            log.info("server stopped")
        if self._metrics is not None:
            await self._metrics.close()
            self._metrics = None
        self._decode_pool.shutdown(wait=False, cancel_futures=True)

    def request_stop(self) -> None:
        """Starts the graceful stop; asked again while it drains (a second SIGINT or SIGTERM),
        stops now: requests still running are cancelled."""
        if not self._stop_requested.is_set():
            self._stop_requested.set()
            return
        if self._grpc is not None and not self._forced:
            self._forced = True
            log.warning("stopping now: the requests still running are cancelled")
            task = asyncio.ensure_future(self._grpc.stop(None))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop_requested(self) -> None:
        """Returns once ``request_stop()`` has been called (by a signal handler, say)."""
        await self._stop_requested.wait()

    async def serve(self) -> None:
        """Starts, serves until ``request_stop()``, then shuts down."""
        async with self:
            await self.stop_requested()

    async def __aenter__(self) -> Server:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _grpc_options(self) -> list[tuple[str, int]]:
        config = self.config
        options = [
            ("grpc.max_receive_message_length", transport_message_bytes(config.max_message_bytes)),
            # gRPC enables SO_REUSEPORT by default, which lets a second server start on a port
            # already in use and silently take half the traffic: only --workers shares a port.
            ("grpc.so_reuseport", int(config.workers > 1)),
            ("grpc.max_concurrent_streams", config.max_streams_per_connection),
            ("grpc.keepalive_time_ms", _ms(config.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(config.keepalive_timeout_seconds)),
            # Pings a client may send: not without a call open, at most one per interval; the
            # third too early (two strikes) is answered with GOAWAY too_many_pings.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", _ms(config.min_client_ping_seconds)),
            ("grpc.http2.max_ping_strikes", 2),
        ]
        # gRPC's own default for each of these is "never".
        for option, seconds in (
            ("grpc.max_connection_idle_ms", config.max_connection_idle_seconds),
            ("grpc.max_connection_age_ms", config.max_connection_age_seconds),
            ("grpc.max_connection_age_grace_ms", config.max_connection_age_grace_seconds),
        ):
            if seconds:
                options.append((option, _ms(seconds)))
        return options

    def _bind(self, server: grpc.aio.Server, credentials: grpc.ServerCredentials | None) -> None:
        port = self.config.port
        for index, host in enumerate(_hosts(self.config)):
            address = f"{_bracketed(host)}:{port}"
            try:
                if credentials is None:
                    bound = server.add_insecure_port(address)
                else:
                    bound = server.add_secure_port(address, credentials)
            except RuntimeError as error:
                if index == 0 or _in_use(host, port):
                    # The other half of localhost taken by another process would answer half of
                    # the clients: refused rather than served.
                    raise OSError(f"can't listen on {address}: {error}") from None
                log.warning("not listening on %s (%s)", address, error)  # no IPv6 here, say
                continue
            port = self.port = bound
            self.addresses.append(f"{_bracketed(host)}:{bound}")

    def _credentials(self) -> grpc.ServerCredentials | None:
        cert, key, client_ca = self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca
        if cert is None or key is None:
            return None
        _check_key_pair(cert, key)
        pairs = [(key.read_bytes(), cert.read_bytes())]
        if client_ca is None:
            return grpc.ssl_server_credentials(pairs)
        _check_client_ca(client_ca)
        # Mutual TLS: a client without a certificate signed by one of these CAs fails the
        # handshake, before any RPC.
        return grpc.ssl_server_credentials(
            pairs, root_certificates=client_ca.read_bytes(), require_client_auth=True
        )

    def _announce(self) -> None:
        models = ", ".join(f"{m.name} ({m.backend})" for m in self.core.models) or "no model"
        log.info("serving %s on %s", models, ", ".join(self.addresses))
        if self.metrics_addresses:
            urls = ", ".join(f"http://{address}/metrics" for address in self.metrics_addresses)
            log.info("metrics on %s", urls)
        exposure = _exposure(self.config)
        if exposure:
            log.warning("listening on %s %s", self.config.host, exposure)
        if self.config.ready_file is not None:
            write_atomically(
                self.config.ready_file,
                json.dumps(
                    {
                        "port": self.port,
                        "addresses": self.addresses,
                        "metrics_port": self.metrics_port,
                        "pid": os.getpid(),
                    }
                ),
            )


def _exposure(config: ServerConfig) -> str:
    """What a server reachable beyond this machine lacks, said in a warning; "" when nothing."""
    if config.is_loopback:
        return ""
    authenticated = config.auth_token_file is not None or config.tls_client_ca is not None
    if config.tls_cert is None and not authenticated:
        return (
            "without TLS or authentication: anyone who can reach it can use this server (pass "
            "--tls-cert/--tls-key and --auth-token-file or --tls-client-ca, or keep the default "
            "loopback host)"
        )
    if config.tls_cert is None:
        return (
            "without TLS: the bearer tokens cross the network in clear text, for anyone on the "
            "way to read and reuse (pass --tls-cert/--tls-key)"
        )
    if not authenticated:
        return (
            "without authentication: anyone who can reach it can use this server (pass "
            "--auth-token-file or --tls-client-ca)"
        )
    return ""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _hosts(config: ServerConfig) -> list[str]:
    """The addresses --host means, unbracketed; a server listens on the first, then the others."""
    return ["127.0.0.1", "::1"] if config.host == LOOPBACK else [config.host.strip("[]")]


def _in_use(host: str, port: int) -> bool:
    """Whether another socket holds ``host:port`` (rather than the address being unusable)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _check_key_pair(cert: Path, key: Path) -> None:
    """gRPC reports a bad certificate or key only as "Failed to bind": say what is wrong."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except FileNotFoundError as error:
        raise OSError(f"TLS: {error.filename} does not exist") from None
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise OSError(
            f"TLS: --tls-cert {cert} and --tls-key {key} are not a PEM certificate chain and its "
            f"private key ({reason})"
        ) from None


def _check_client_ca(client_ca: Path) -> None:
    """gRPC takes any bytes as CA certificates and then refuses every client: say what is wrong."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=client_ca)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        raise OSError(
            f"TLS: --tls-client-ca {client_ca} holds no PEM CA certificate ({reason})"
        ) from None
    except OSError as error:
        raise OSError(f"TLS: --tls-client-ca {client_ca}: {error.strerror}") from None


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def run(config: ServerConfig) -> None:
    """Serves until SIGINT or SIGTERM, then shuts down gracefully; a second signal during the
    grace period stops it at once. SIGHUP re-reads --auth-token-file."""

    async def main() -> None:
        server = Server(config)
        loop = asyncio.get_running_loop()
        handlers: dict[signal.Signals, Callable[[], None]] = {}
        # Only the main thread receives signals: run() from another thread (embedding code)
        # leaves the process's handlers alone and is stopped with request_stop().
        if threading.current_thread() is threading.main_thread():
            handlers = {signal.SIGINT: server.request_stop, signal.SIGTERM: server.request_stop}
            if config.auth_token_file is not None:
                # Without a token file SIGHUP keeps its usual meaning: the process ends.
                handlers[signal.SIGHUP] = server.reload_tokens
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            await server.serve()
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)

    asyncio.run(main())
