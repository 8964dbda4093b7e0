"""One config from flags, TORCHGRPC_* variables and a TOML file: precedence, errors that name the
setting and its source, --print-config, and docs/configuration.md generated from the definition."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve import config_docs, config_sources
from serve.config import ServerConfig, add_arguments, load_config
from serve.config_sources import ConfigError, Loaded, setting, settings_of
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own TORCHGRPC_* variables stay out of these tests."""
    for name in list(os.environ):
        if name.startswith(config_sources.ENV_PREFIX):
            monkeypatch.delenv(name)


def load(*argv: str) -> Loaded[ServerConfig]:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_config(parser.parse_args(argv), os.environ)


def refusal(*argv: str) -> str:
    with pytest.raises(ConfigError) as refused:
        load(*argv)
    return str(refused.value)


def toml_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def python_m_serve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serve", *argv],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_flags_beat_the_environment_which_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = toml_file(tmp_path / "server.toml", "max_queue_size = 16\nport = 1111\nworkers = 3\n")
    monkeypatch.setenv("TORCHGRPC_CONFIG", str(path))
    monkeypatch.setenv("TORCHGRPC_PORT", "2222")
    monkeypatch.setenv("TORCHGRPC_WORKERS", "4")
    loaded = load("--workers", "5")
    assert loaded.config == ServerConfig(max_queue_size=16, port=2222, workers=5)
    assert {
        name: loaded.sources[name] for name in ("max_queue_size", "port", "workers", "host")
    } == {
        "max_queue_size": str(path),
        "port": "TORCHGRPC_PORT",
        "workers": "--workers",
        "host": "default",
    }
    assert loaded.config_file == (path, "TORCHGRPC_CONFIG")


def test_the_config_flag_beats_the_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHGRPC_CONFIG", str(toml_file(tmp_path / "a.toml", "port = 1\n")))
    chosen = toml_file(tmp_path / "b.toml", "port = 2\n")
    loaded = load("--config", str(chosen))
    assert (loaded.config.port, loaded.sources["port"]) == (2, str(chosen))
    assert loaded.config_file == (chosen, "--config")


def test_the_file_takes_toml_types_or_a_flags_text(tmp_path: Path) -> None:
    path = toml_file(
        tmp_path / "server.toml",
        'models = ["a", "b"]\nformats = "jpeg,png"\nmax_queue_delay_ms = 2\n'
        'exif_transpose = false\naccess_log = "yes"\ntls_cert = "c.pem"\ntls_key = "k.pem"\n',
    )
    config = load("--config", str(path)).config
    assert config == ServerConfig(
        models=("a", "b"),
        formats=frozenset({"JPEG", "PNG"}),
        max_queue_delay_ms=2.0,
        exif_transpose=False,
        access_log=True,
        tls_cert=Path("c.pem"),
        tls_key=Path("k.pem"),
    )
    assert type(config.max_queue_delay_ms) is float


def test_a_variable_is_read_as_the_flags_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHGRPC_MODELS", "a, b")
    monkeypatch.setenv("TORCHGRPC_ACCESS_LOG", "on")
    monkeypatch.setenv("TORCHGRPC_LOG_LEVEL", "debug")
    monkeypatch.setenv("TORCHGRPC_READY_FILE", "")  # empty: unset
    loaded = load()
    assert loaded.config == ServerConfig(models=("a", "b"), access_log=True, log_level="DEBUG")
    assert loaded.sources["ready_file"] == "TORCHGRPC_READY_FILE"


def test_a_bad_value_names_the_setting_and_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert refusal("--max-queue-size", "1.5") == (
        'max_queue_size = "1.5" (from --max-queue-size): expected an integer'
    )
    assert refusal("--artifacts", "a", "--access-log", "maybe") == (
        'access_log = "maybe" (from --access-log): expected true or false (or yes/no, on/off, 1/0)'
    )
    path = toml_file(tmp_path / "server.toml", 'max_queue_size = "abc"\n')
    assert refusal("--config", str(path)) == (
        f'max_queue_size = "abc" (from {path}): expected an integer'
    )
    path.write_text("port = true\n")
    assert refusal("--config", str(path)) == f"port = true (from {path}): expected an integer"
    path.write_text("models = [1, 2]\n")
    assert refusal("--config", str(path)) == (
        f"models = [1, 2] (from {path}): expected a list of strings"
    )
    # Every source is checked whole: the flag that overrides the bad variable doesn't hide it.
    monkeypatch.setenv("TORCHGRPC_MAX_QUEUE_SIZE", "many")
    assert refusal("--max-queue-size", "8") == (
        'max_queue_size = "many" (from TORCHGRPC_MAX_QUEUE_SIZE): expected an integer'
    )


def test_times_must_be_finite_and_fit_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    # NaN passes every comparison: unchecked, it would end each call at once, or fail late.
    monkeypatch.setenv("TORCHGRPC_DEFAULT_DEADLINE_SECONDS", "nan")
    assert refusal().startswith("default_deadline_seconds must be a finite number")
    monkeypatch.delenv("TORCHGRPC_DEFAULT_DEADLINE_SECONDS")
    assert refusal("--keepalive-seconds", "inf").startswith("keepalive_seconds must be a finite")
    assert refusal("--max-connection-age-seconds", "3e6").startswith(
        "max_connection_age_seconds must be at most 2,147,483"
    )


def test_a_file_that_cant_be_read_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert refusal("--config", str(missing)) == f"config file {missing}: No such file or directory"
    broken = toml_file(tmp_path / "broken.toml", "port =\n")
    assert refusal("--config", str(broken)) == (
        f"config file {broken}: Invalid value (at line 1, column 7)"
    )


def test_an_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = toml_file(tmp_path / "server.toml", "max-queue-size = 128\n")
    assert refusal("--config", str(path)) == (
        f"unknown setting max-queue-size in {path} (did you mean max_queue_size?)"
    )
    path.write_text("[server]\nport = 1\n")
    assert refusal("--config", str(path)) == f"unknown setting server in {path}"


def test_an_unknown_variable_is_a_warning_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHGRPC_MAX_QUEUE", "1")
    monkeypatch.setenv("TORCHGRPC_SERVER_PYTHON", "/usr/bin/python3")  # the test harness's
    loaded = load()
    assert loaded.config == ServerConfig()
    assert loaded.warnings == (
        "unknown environment variable TORCHGRPC_MAX_QUEUE ignored "
        "(did you mean TORCHGRPC_MAX_QUEUE_SIZE?)",
        "unknown environment variable TORCHGRPC_SERVER_PYTHON ignored",
    )


def test_an_error_between_settings_names_where_each_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert refusal("--port", "9000", "--metrics-port", "9000") == (
        "port and metrics_port are both 9000: they must differ "
        "(port from --port, metrics_port from --metrics-port)"
    )
    path = toml_file(tmp_path / "server.toml", 'formats = ["nope"]\n')
    assert refusal("--config", str(path)).endswith(
        f"(formats from {path}, max_pixels: default, max_request_pixels: default)"
    )
    monkeypatch.setenv("TORCHGRPC_TLS_CLIENT_CA", "ca.pem")
    assert refusal() == (
        "--tls-client-ca needs --tls-cert and --tls-key "
        "(tls_client_ca from TORCHGRPC_TLS_CLIENT_CA, tls_cert: default, tls_key: default)"
    )


@dataclass(frozen=True)
class Window:
    """A settings class of its own: the loader knows no setting by name."""

    low: int = setting(0, "lowest")
    high: int = setting(10, "highest")

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low is above high")


def test_an_error_naming_no_setting_lists_the_sources_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    config_sources.add_arguments(parser, Window)
    monkeypatch.setenv("TORCHGRPC_LOW", "20")
    with pytest.raises(ConfigError) as refused:
        config_sources.load(Window, parser.parse_args(["--high", "5"]), os.environ)
    assert str(refused.value) == "low is above high (sources: TORCHGRPC_LOW, --high)"
    assert config_sources.load(Window, parser.parse_args(["--high", "30"]), os.environ).config == (
        Window(low=20, high=30)
    )


def test_a_loaded_config_can_go_to_a_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHGRPC_FORMATS", "png")
    config = load("--models", "a,b", "--tls-cert", "c.pem", "--tls-key", "k.pem").config
    assert pickle.loads(pickle.dumps(config)) == config


def test_print_config_shows_each_value_and_its_source_as_toml(tmp_path: Path) -> None:
    path = toml_file(tmp_path / "server.toml", 'max_queue_size = 16\nmodels = "a,b"\n')
    env = {**os.environ, "TORCHGRPC_PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "serve", "--config", str(path), "--workers", "2", "--print-config"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    for line in (
        f"# Config file: {path} (from --config).",
        f"max_queue_size = 16  # from {path}",
        f'models = ["a", "b"]  # from {path}',
        "port = 0  # from TORCHGRPC_PORT",
        "workers = 2  # from --workers",
        "metrics_port = 8002  # default",
        'formats = ["BMP", "GIF", "JPEG", "PNG", "WEBP"]  # default',
        "exif_transpose = true  # default",
        "# tls_cert is unset  # default",
    ):
        assert line in lines
    # Pasted into a file, the output is the same configuration.
    expected = ServerConfig(max_queue_size=16, models=("a", "b"), port=0, workers=2)
    pasted = toml_file(tmp_path / "pasted.toml", done.stdout)
    assert load("--config", str(pasted)).config == expected
    unset = {s.name for s in settings_of(ServerConfig) if getattr(expected, s.name) is None}
    assert set(tomllib.loads(done.stdout)) == {s.name for s in settings_of(ServerConfig)} - unset


def test_a_bad_value_stops_start_up_with_one_line(tmp_path: Path) -> None:
    path = toml_file(tmp_path / "server.toml", 'max_queue_size = "abc"\n')
    done = python_m_serve("--config", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f'python -m serve: error: max_queue_size = "abc" (from {path}): expected an integer\n'
    )


def test_the_configuration_page_is_up_to_date() -> None:
    page = ROOT / "docs" / "configuration.md"
    fresh = config_docs.render()
    assert page.read_text() == fresh, (
        f"docs/configuration.md is stale: run `{config_docs.COMMAND}` (python -m serve.config_docs)"
    )


def test_the_page_documents_every_setting_and_its_example_loads(tmp_path: Path) -> None:
    page = config_docs.render()
    for item in settings_of(ServerConfig):
        flags = ", ".join(f"`{flag}`" for flag in item.flags)
        assert f"| `{item.name}` | {flags} | `{item.variable}` |" in page
    assert str(ROOT) not in page  # the same page from any checkout
    assert 'python -m serve: error: port = "abc" (from TORCHGRPC_PORT): expected an integer' in page
    example = toml_file(tmp_path / "example.toml", config_docs.EXAMPLE)
    assert load("--config", str(example)).config.models == ("efficientnet_lite0", "resnet34")
