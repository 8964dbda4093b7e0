"""Version swaps under load: how many requests fail, and what a swap costs the requests around it.

    python -m benchmarks.swap [--model efficientnet_lite0] [--swaps 5] [--concurrency 8]

Copies the exported model into a temporary repository (hard links: no bytes copied), serves it
with ``--model-control explicit``, and drives the tutorial API in a closed loop twice, for the
same time: once quietly, once while a new version folder appears every few seconds and
RepositoryModelLoad swaps to it. Each new version is loaded beside the serving one, so the swap
costs a load's CPU on these cores; a failed request is what it must never cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

from benchmarks.bench import sender
from benchmarks.loadgen import LoadResult, closed_loop
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, SAMPLE_IMAGES
from export.manifest import EXPORTED_VERSION
from serve.config import DEFAULT_ARTIFACTS
from serve.pb.kserve import grpc_service_pb2 as kserve_pb2
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_pb2_grpc

__all__ = ["main"]


def linked_copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, copy_function=os.link)


async def swapping(
    address: str, folder: Path, model: str, swaps: int, interval: float
) -> list[float]:
    """Adds version 2, 3, ... every ``interval`` seconds and swaps to it; each swap's seconds."""
    seconds = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        for number in range(2, swaps + 2):
            await asyncio.sleep(interval)
            linked_copy(folder / EXPORTED_VERSION, folder / str(number))
            started = time.perf_counter()
            await stub.RepositoryModelLoad(kserve_pb2.RepositoryModelLoadRequest(model_name=model))
            seconds.append(time.perf_counter() - started)
    return seconds


async def run(
    address: str, folder: Path, model: str, concurrency: int, swaps: int, interval: float
) -> tuple[LoadResult, LoadResult, list[float]]:
    images = [(SAMPLE_IMAGES / "cat.jpg").read_bytes()]
    duration = interval * (swaps + 1)
    async with grpc.aio.insecure_channel(address) as channel:
        send = sender("tutorial", channel, images, model)
        await closed_loop(send, concurrency, duration=3.0)  # warm-up
        quiet = await closed_loop(send, concurrency, duration=duration)
        load, swap_seconds = await asyncio.gather(
            closed_loop(send, concurrency, duration=duration),
            swapping(address, folder, model, swaps, interval),
        )
    return quiet, load, swap_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.swap", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between swaps")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="torchgrpc-swap-") as tmp:
        repository = Path(tmp) / "repository"
        folder = repository / args.model
        linked_copy(args.artifacts / args.model, folder)
        arguments = ["--model-repository", str(repository), "--model", args.model,
                     "--model-control", "explicit", "--backend", "onnxruntime"]  # fmt: skip
        with ServerProcess(arguments) as server:
            quiet, load, swap_seconds = asyncio.run(
                run(server.address, folder, args.model, args.concurrency, args.swaps,
                    args.interval)
            )  # fmt: skip
    print(f"{'run':12} {'requests':>9} {'errors':>7} {'img/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for name, result in (("quiet", quiet), ("swapping", load)):
        print(
            f"{name:12} {result.requests:>9} {result.errors:>7} {result.images_per_second:>7.1f} "
            f"{result.percentile_ms(50):>7.1f} {result.percentile_ms(99):>7.1f}"
        )
    print("swaps (s): " + ", ".join(f"{s:.2f}" for s in swap_seconds))
    return 1 if load.errors else 0


if __name__ == "__main__":
    sys.exit(main())
