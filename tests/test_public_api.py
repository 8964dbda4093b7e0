"""The package's public surface: a short `__all__`, each name importable, and a light client."""

from __future__ import annotations

import serve
import serve.client
import serve.errors
from tests.conftest import modules_loaded_by


def test_exported_members() -> None:
    assert serve.__all__ == ["AsyncClient", "Client", "Server", "ServerConfig"]
    for module in (serve, serve.client, serve.errors):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_importing_the_client_loads_neither_pytorch_nor_the_server() -> None:
    heavy = ["torch", "onnxruntime", "PIL", "serve.server"]
    assert modules_loaded_by("from serve import Client, AsyncClient", heavy) == []
