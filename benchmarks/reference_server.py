"""What the reference servers in benchmarks/ share: a grpc.aio server for one servicer of the
tutorial's API, started the way `benchmarks.process.ServerProcess` starts a server."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc

from export.catalog import DEFAULT_MODEL
from serve.config import DEFAULT_ARTIFACTS
from serve.pb import inference_pb2_grpc


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


def parser(description: str, default_port: int) -> argparse.ArgumentParser:
    """``--model``, ``--artifacts``, ``--port`` and ``--ready-file``."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--model", default=DEFAULT_MODEL)
    arguments.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    arguments.add_argument("--port", type=int, default=default_port)
    arguments.add_argument("--ready-file", type=Path)
    return arguments


def run(args: argparse.Namespace, servicer: inference_pb2_grpc.InferenceServerServicer) -> None:
    """Serves ``servicer`` on ``args.port`` until killed."""
    asyncio.run(serve(servicer, args.port, args.ready_file))
