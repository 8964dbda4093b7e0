"""What the reference servers in benchmarks/ share: a grpc.aio server for one servicer of the
tutorial's API, started the way `serve.process.ServerProcess` starts a server."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc

from export.catalog import DEFAULT_MODEL
from serve.config import DEFAULT_ARTIFACTS
from serve.pb import inference_pb2_grpc

MakeServicer = Callable[[str, Path], inference_pb2_grpc.InferenceServerServicer]


async def serve(
    servicer: inference_pb2_grpc.InferenceServerServicer, port: int, ready_file: Path | None
) -> None:
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServerServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"[::]:{port}")
    await server.start()
    if ready_file is not None:
        ready_file.write_text(json.dumps({"port": bound}))  # noqa: ASYNC240 (once, at start-up)
    await server.wait_for_termination()


def main(description: str, make_servicer: MakeServicer, default_port: int) -> None:
    """``--model``, ``--artifacts``, ``--port`` and ``--ready-file``, then serve until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    servicer = make_servicer(args.model, args.artifacts)
    asyncio.run(serve(servicer, args.port, args.ready_file))
