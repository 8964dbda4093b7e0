"""Python clients for torchgrpc (``python -m serve.client IMAGE...`` on the command line)."""

from serve.client.api import DEFAULT_SERVER, AsyncClient, Client, ImageInput, Result
from serve.client.channels import ChannelSecurity

__all__ = ["DEFAULT_SERVER", "AsyncClient", "ChannelSecurity", "Client", "ImageInput", "Result"]
