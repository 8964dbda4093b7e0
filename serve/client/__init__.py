"""Python clients for torchgrpc (``python -m serve.client IMAGE...`` on the command line)."""

from serve.client.api import DEFAULT_SERVER, AsyncClient, Client, ImageInput, Result

__all__ = ["DEFAULT_SERVER", "AsyncClient", "Client", "ImageInput", "Result"]
