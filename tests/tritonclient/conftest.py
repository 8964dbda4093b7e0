"""NVIDIA's tritonclient against our server: the wire-compatibility suite.

tritonclient needs protobuf<7 and its generated modules register the same ``inference.*``
protobuf symbols as ``serve/pb``, so the two can't share an interpreter. This suite runs in its own
virtualenv (``make tritonclient-test`` builds ``.venv-tritonclient``), never imports ``serve``, and
talks over loopback to one server per session, started from the main virtualenv's Python
(``TORCHGRPC_SERVER_PYTHON`` overrides which).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from lite0 import MODEL

from benchmarks.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
# The main suite's exports: up to date after its run, so exporting here is only a check.
ARTIFACTS = ROOT / ".cache" / "test-artifacts"
# Pinned rather than the defaults (which follow the core count): the config tests read them.
SETTINGS = (
    "--backend", "onnxruntime", "--instances", "2", "--max-batch-size", "16",
    "--max-queue-size", "128", "--max-queue-delay-ms", "0",
)  # fmt: skip


def server_python() -> str:
    """The main virtualenv's interpreter, which has torch and our protobuf modules."""
    return os.environ.get("TORCHGRPC_SERVER_PYTHON") or str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="session")
def server_address() -> Iterator[str]:
    python = server_python()
    export = [python, "-m", "export", "--model", MODEL, "--artifacts", str(ARTIFACTS)]
    subprocess.run(export, check=True, cwd=ROOT, capture_output=True)
    arguments = ["--model", MODEL, "--artifacts", str(ARTIFACTS), *SETTINGS]
    with ServerProcess(arguments, python=python, cwd=ROOT) as server:
        yield server.address


@pytest.fixture(scope="session")
def client(server_address: str) -> Iterator[grpcclient.InferenceServerClient]:
    opened = grpcclient.InferenceServerClient(url=server_address)
    yield opened
    opened.close()
