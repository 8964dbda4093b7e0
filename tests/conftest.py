"""Shared fixtures: exported models (cached between runs) and one real server per test session."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch
from torchvision.models import ResNet34_Weights

from export.pipeline import ExportResult, export_model
from export.zoo import get_spec
from serve.config import ServerConfig
from serve.server import Server

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "tests" / "images"
# Exports made by the tests live apart from the user's artifacts/ and survive between runs:
# an up-to-date export is skipped, so only the first run pays for it.
TEST_ARTIFACTS = ROOT / ".cache" / "test-artifacts"
CAT_JPG = IMAGES / "cat.jpg"
CAT_PNG = IMAGES / "cat.png"
COFFEE_JPG = IMAGES / "coffee.jpg"
EGYPTIAN_CAT, ESPRESSO = 285, 967
# tests/tritonclient runs in its own virtualenv (`make tritonclient-test`): tritonclient and
# serve/pb register the same protobuf symbols, so this interpreter must not import it.
collect_ignore = ["tritonclient"]


class ServerThread:
    """A real server on its own event loop in a background thread, so tests can use blocking
    clients as well as asyncio ones."""

    def __init__(self, config: ServerConfig) -> None:
        self.server = Server(config)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as error:
            self._error = error
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        async with self.server:
            self._ready.set()
            await self.server.stop_requested()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(timeout=300)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.request_stop)
            self._thread.join(timeout=60)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(scope="session")
def lite0_export() -> ExportResult:
    TEST_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return export_model("efficientnet_lite0", None, TEST_ARTIFACTS)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A TORCH_HOME whose hub cache holds resnet34's ImageNet weights under the file name
    torchvision expects, so torchvision's own loading code finds them without a download. The
    values are untrained (the real file can't be downloaded here), the path is the real one."""
    home = tmp_path_factory.mktemp("torch-home")
    checkpoint = (
        home / "hub" / "checkpoints" / ResNet34_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    )
    checkpoint.parent.mkdir(parents=True)
    torch.manual_seed(34)
    torch.save(get_spec("resnet34").build().state_dict(), checkpoint)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def resnet34_export(torch_home: Path) -> ExportResult:
    TEST_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return export_model("resnet34", None, TEST_ARTIFACTS)


@pytest.fixture(scope="session")
def base_config(lite0_export: ExportResult, resnet34_export: ExportResult) -> ServerConfig:
    # No metrics listener (tests/test_metrics.py has its own): test servers run side by side.
    return ServerConfig(
        models=("efficientnet_lite0", "resnet34"),
        model_repository=TEST_ARTIFACTS,
        port=0,
        metrics_port=0,
    )


@pytest.fixture(scope="session")
def server(base_config: ServerConfig) -> Iterator[ServerThread]:
    """The session's server: both models on ONNX Runtime, loopback, a free port."""
    with ServerThread(base_config) as running:
        yield running


@pytest.fixture(scope="session")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as opened:
        yield opened


def modules_loaded_by(code: str, modules: Sequence[str]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {tuple(modules)!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded: list[str] = ast.literal_eval(done.stdout.strip())
    return loaded


def config_with(config: ServerConfig, **changes: object) -> ServerConfig:
    return replace(config, **changes)  # type: ignore[arg-type]
