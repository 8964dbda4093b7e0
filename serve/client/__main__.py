"""`python -m serve.client IMAGE... [--top-k N] [--server HOST:PORT] [--model NAME]`, with
`--tls-ca FILE` (and `--tls-cert/--tls-key` for mutual TLS) and `--token-file FILE` (or `--token`,
or $TORCHGRPC_TOKEN) for a secured server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from serve.client.api import DEFAULT_SERVER, Client, Result
from serve.client.channels import add_security_arguments, security_from_args
from serve.errors import TorchgrpcError


def format_table(paths: Sequence[str], result: Result) -> str:
    width = max(len(label.name) for labels in result for label in labels)
    lines = []
    for path, labels in zip(paths, result, strict=True):
        lines.append(path)
        for rank, label in enumerate(labels, start=1):
            score = f"{label.probability:7.2%}"
            lines.append(f"  {rank}. {label.name:<{width}}  {score}  (class {label.class_id})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.client", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, help="image files to classify")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT")
    parser.add_argument("--model", default="", help="model name (default: the server's)")
    add_security_arguments(parser)
    args = parser.parse_args(argv)
    try:
        client = Client(args.server, security=security_from_args(args))
    except (OSError, ValueError) as error:  # options that don't go together, a missing file
        parser.error(str(error))
    try:
        with client:
            result = client.classify(args.images, top_k=args.top_k, model=args.model)
            round_trip = client.last_round_trip
    except (TorchgrpcError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table([str(p) for p in args.images], result))
    print(f"round trip: {round_trip * 1000:.1f} ms for {len(args.images)} image(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
