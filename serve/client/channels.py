"""How a client reaches a server: plaintext or TLS, a client certificate for mutual TLS, a bearer
token. One helper for the clients, ``python -m serve.client`` and the load generator, and the
command-line options they share.

The token travels as call credentials (``authorization: Bearer <token>`` on every call of every
stub): gRPC adds it below the stubs, and refuses call credentials on a plaintext channel, so it
never crosses a network in clear text. Plaintext to a loopback address is the exception: the
channel is then a "local" one, which gRPC trusts with call credentials.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from serve.auth import read_tokens

__all__ = [
    "PLAINTEXT",
    "TOKEN_VARIABLE",
    "ChannelSecurity",
    "add_security_arguments",
    "open_aio_channel",
    "open_channel",
    "security_from_args",
]

# The command line's token when neither --token nor --token-file is given.
TOKEN_VARIABLE = "TORCHGRPC_TOKEN"

Options = list[tuple[str, int | str]]


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS when ``tls_ca`` (the CA to trust; else the system's) or a client certificate is
    given; ``tls_cert``/``tls_key``: the client's certificate and key, for mutual TLS;
    ``token``: sent as ``authorization: Bearer <token>``."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.token is not None and (not self.token or len(self.token.split()) != 1):
            raise ValueError("a token is one word, with no spaces")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None


PLAINTEXT = ChannelSecurity()


def open_channel(
    server: str, security: ChannelSecurity = PLAINTEXT, options: Options | None = None
) -> grpc.Channel:
    """A blocking channel to ``server`` (HOST:PORT) secured as ``security`` says."""
    credentials = _credentials(server, security)
    if credentials is None:
        return grpc.insecure_channel(server, options)
    return grpc.secure_channel(server, credentials, options)


def open_aio_channel(
    server: str, security: ChannelSecurity = PLAINTEXT, options: Options | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``server`` (HOST:PORT) secured as ``security`` says."""
    credentials = _credentials(server, security)
    if credentials is None:
        return grpc.aio.insecure_channel(server, options)
    return grpc.aio.secure_channel(server, credentials, options)


def _credentials(server: str, security: ChannelSecurity) -> grpc.ChannelCredentials | None:
    """None: a plaintext channel. ValueError for a token in clear text beyond loopback; OSError
    for a certificate file that can't be read."""
    if security.tls:
        transport = grpc.ssl_channel_credentials(
            root_certificates=_read(security.tls_ca),
            private_key=_read(security.tls_key),
            certificate_chain=_read(security.tls_cert),
        )
    elif security.token is None:
        return None
    elif _is_loopback(server):
        transport = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        raise ValueError(
            f"a token is sent only over TLS or to a loopback address, and {server} is neither: "
            "pass --tls-ca (anyone on the way could read a token sent in clear text)"
        )
    if security.token is None:
        return transport
    return grpc.composite_channel_credentials(
        transport, grpc.access_token_call_credentials(security.token)
    )


def _read(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _is_loopback(server: str) -> bool:
    """Whether HOST:PORT (``[::1]:PORT`` for IPv6) names this machine by a loopback address."""
    if server.startswith("["):
        host = server[1 : server.find("]")]
    else:
        host = server.rpartition(":")[0] if server.count(":") == 1 else server
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``security_from_args`` reads."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="PEM CA certificate to trust (implies TLS)"
    )
    group.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="PEM client certificate, for mutual TLS"
    )
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    token = group.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"bearer token to send (visible to other users in the process list: prefer "
        f"--token-file or ${TOKEN_VARIABLE})",
    )
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file whose first token is sent (the format of the server's --auth-token-file)",
    )


def security_from_args(args: argparse.Namespace) -> ChannelSecurity:
    """The ``ChannelSecurity`` of ``add_security_arguments``' options; the token falls back on
    $TORCHGRPC_TOKEN. ValueError for options that don't go together, OSError for a token file
    that can't be used."""
    token = args.token
    if token is None and args.token_file is not None:
        token = read_tokens(args.token_file)[0]
    if token is None:
        token = os.environ.get(TOKEN_VARIABLE) or None
    return ChannelSecurity(args.tls_ca, args.tls_cert, args.tls_key, token)
