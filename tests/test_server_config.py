"""Settings, the command line derived from them, where the server listens, and start-up errors."""

from __future__ import annotations

import argparse
import logging
import resource
import socket
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import grpc
import pytest

from serve.config import ServerConfig, add_arguments, load_config
from serve.pb import inference_pb2, inference_pb2_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, ROOT, ServerThread, config_with


def parse(*argv: str) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv)).config


def test_every_setting_has_an_option_with_help() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for setting in fields(ServerConfig):
        flag = "--model" if setting.name == "models" else "--" + setting.name.replace("_", "-")
        assert flag in text


def test_options_are_parsed_into_typed_settings() -> None:
    config = parse(
        "--model", "resnet34,efficientnet_lite0", "--backend", "torchscript",
        "--formats", "jpeg,png", "--max-batch-size", "8", "--max-queue-delay-ms", "2.5",
        "--artifacts", "/tmp/somewhere",
    )  # fmt: skip
    assert config.models == ("resnet34", "efficientnet_lite0")
    assert config.backend == "torchscript"
    assert config.formats == frozenset({"JPEG", "PNG"})
    assert config.batching(16).max_batch_size == 8
    assert config.batching(16).max_queue_delay == 0.0025
    assert ServerConfig().batching(16).max_batch_size == 16  # 0: the backend's default
    assert config.model_repository == Path("/tmp/somewhere")
    assert parse() == ServerConfig()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"backend": "tensorrt"}, "unknown backend 'tensorrt'"),
        ({"tls_cert": Path("cert.pem")}, "go together"),
        ({"port": 70000}, "out of range"),
        ({"max_pixels": 0}, "max_pixels must be positive"),
        ({"formats": frozenset({"NOPE"})}, "NOPE"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"model_control": "sometimes"}, "unknown model control 'sometimes'"),
        ({"repository_poll_seconds": 0}, "repository_poll_seconds must be positive"),
        ({"model_control": "explicit", "workers": 2}, "explicit needs --workers 1"),
    ],
)
def test_bad_settings_are_refused_at_construction(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**changes)  # type: ignore[arg-type]


def test_default_listens_on_loopback_ipv4_and_ipv6_only(server: ServerThread) -> None:
    port = server.server.port
    assert server.server.addresses == [f"127.0.0.1:{port}", f"[::1]:{port}"]
    with grpc.insecure_channel(f"[::1]:{port}") as channel:
        reply = inference_pb2_grpc.InferenceServerStub(channel).inference(
            inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()])
        )
    assert list(reply.pred) == [EGYPTIAN_CAT]


def test_a_port_in_use_is_an_error_not_a_shared_port(
    server: ServerThread, base_config: ServerConfig
) -> None:
    clash = config_with(base_config, models=("efficientnet_lite0",), port=server.server.port)
    with pytest.raises(OSError, match=r"can.t listen on 127\.0\.0\.1"), ServerThread(clash):
        pass


def test_opening_to_the_network_without_tls_warns(
    base_config: ServerConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_with(base_config, models=("efficientnet_lite0",), host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="serve"), ServerThread(config) as running:
        assert running.server.addresses == [f"0.0.0.0:{running.server.port}"]
    assert any("without TLS or authentication" in r.getMessage() for r in caplog.records)


def test_missing_artifacts_stop_start_up_with_the_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "serve", "--artifacts", str(tmp_path), "--port", "0",
         "--metrics-port", "0"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "make export MODEL=efficientnet_lite0" in done.stderr


def test_tls_serves_securely_and_opened_up_warns_only_of_no_authentication(
    base_config: ServerConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    config = config_with(
        base_config, models=("efficientnet_lite0",), host="0.0.0.0", tls_cert=cert, tls_key=key
    )
    with caplog.at_level(logging.WARNING, logger="serve"), ServerThread(config) as running:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        address = f"localhost:{running.server.port}"
        with grpc.secure_channel(address, credentials) as channel:
            reply = inference_pb2_grpc.InferenceServerStub(channel).inference(
                inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()]), timeout=30
            )
        with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError):
            inference_pb2_grpc.InferenceServerStub(plain).inference(
                inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()]), timeout=5
            )
    assert list(reply.pred) == [EGYPTIAN_CAT]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not any("without TLS" in message for message in warnings)
    assert any("0.0.0.0 without authentication" in message for message in warnings)


def test_the_server_takes_the_hard_open_files_limit(tmp_path: Path) -> None:
    """A soft limit of 256 descriptors (a shell's default is 1,024) would lock clients out after
    as many connections: the server raises it to the hard limit at start-up."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip(f"the hard limit here ({hard}) leaves nothing to raise")
    ready = tmp_path / "ready.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "serve", "--model-repository", str(tmp_path / "empty"),
         "--model-control", "explicit", "--port", "0", "--metrics-port", "0",
         "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )  # fmt: skip
    try:
        (tmp_path / "empty").mkdir()
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
        assert ready.exists(), "the server did not start"
        limits = Path(f"/proc/{server.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_half_of_localhost_taken_by_another_process_stops_start_up(
    base_config: ServerConfig,
) -> None:
    """A port free on 127.0.0.1 but held on ::1 by someone else: serving only half of localhost
    would send some clients to the other process."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as other:
        try:
            other.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        other.listen()
        port = other.getsockname()[1]
        clash = config_with(base_config, models=("efficientnet_lite0",), port=port)
        with pytest.raises(OSError, match=rf"can.t listen on \[::1\]:{port}"), ServerThread(clash):
            pass


def test_a_bad_tls_key_pair_says_so(base_config: ServerConfig, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("nor this\n")
    config = config_with(base_config, models=("efficientnet_lite0",), tls_cert=cert, tls_key=key)
    refused = pytest.raises(OSError, match=r"TLS: --tls-cert .* are not a PEM certificate chain")
    with refused, ServerThread(config):
        pass
