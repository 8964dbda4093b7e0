"""The package's public surface: a short `__all__`, each name importable, and a light client."""

from __future__ import annotations

import subprocess
import sys

import serve
import serve.client
import serve.errors
from tests.conftest import ROOT


def test_exported_members() -> None:
    assert serve.__all__ == ["AsyncClient", "Client", "Server", "ServerConfig"]
    for module in (serve, serve.client, serve.errors):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_importing_the_client_loads_neither_pytorch_nor_the_server() -> None:
    code = (
        "import sys\n"
        "from serve import Client, AsyncClient\n"
        "heavy = ('torch', 'onnxruntime', 'PIL', 'serve.server')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "[]"
