"""`python -m benchmarks.hostile [--base REV]`: what silent calls cost a server.

Opens ``--calls`` calls that send their headers and then nothing (no message, no end) over
``--connections`` connections, waits, and reports the server's resident memory before and after,
how the calls ended (a server's default deadline ends them; its concurrent-call limit refuses the
excess at once) and whether a well-behaved client on a connection of its own is still answered,
and how fast. Over one connection a server that limits its streams per connection sees only that
many: gRPC's client queues the rest; ``--connections 100`` reaches the concurrent-call limit.
With ``--base REV`` the same runs against revision REV's server first, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shlex
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from pathlib import Path

import grpc

from benchmarks.ab import worktree
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, SAMPLE_IMAGES
from serve.config import DEFAULT_ARTIFACTS
from serve.pb import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
METHOD = "/InferenceServer/inference"


async def silent_calls(
    address: str, calls: int, connections: int, hold: float
) -> collections.Counter[str]:
    """Opens the silent calls, holds them ``hold`` seconds, and counts how each had ended by then
    ("open": not at all)."""
    release = asyncio.Event()

    async def nothing() -> AsyncIterator[bytes]:
        await release.wait()
        return
        yield b""  # an async generator that never yields

    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(connections)
    ]
    try:
        open_calls = [
            channels[number % connections].stream_stream(METHOD, _raw, _raw)(nothing())
            for number in range(calls)
        ]
        await asyncio.sleep(hold)
        ended: collections.Counter[str] = collections.Counter()
        for call in open_calls:
            ended[(await call.code()).name if call.done() else "open"] += 1
        return ended
    finally:
        release.set()
        for channel in channels:
            await channel.close(grace=None)


def _raw(data: bytes) -> bytes:
    return data


async def answered_in(address: str, image: bytes) -> float:
    """Seconds a tutorial call on a fresh connection takes (an error if not answered in 30 s)."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1)]
    ) as channel:
        started = time.perf_counter()
        await inference_pb2_grpc.InferenceServerStub(channel).inference(
            inference_pb2.InferenceRequest(image=[image]), timeout=30
        )
        return time.perf_counter() - started


async def probe(server: ServerProcess, args: argparse.Namespace, image: bytes) -> str:
    await answered_in(server.address, image)  # warm
    before = server.rss_bytes()
    task = asyncio.create_task(
        silent_calls(server.address, args.calls, args.connections, args.hold)
    )
    await asyncio.sleep(args.hold / 2)
    during = server.rss_bytes()
    try:
        latency = f"{await answered_in(server.address, image) * 1000:.1f} ms"
    except grpc.aio.AioRpcError as error:
        latency = f"not answered ({error.code().name})"
    ended = await task
    return (
        f"RSS {before / 2**20:.0f} MB -> {during / 2**20:.0f} MB "
        f"(+{(during - before) / 2**20:.0f} MB); a good client meanwhile: {latency}; "
        f"after {args.hold:g} s the silent calls are: {dict(ended)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__)
    parser.add_argument("--base", help="also measure this git revision's server, first")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--hold", type=float, default=70.0, help="seconds the calls stay open")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--args", default="", help="more options for the servers")
    args = parser.parse_args(argv)
    image = (SAMPLE_IMAGES / "cat.jpg").read_bytes()
    arguments = ["--model", DEFAULT_MODEL, "--backend", "onnxruntime",
                 "--artifacts", str(args.artifacts.resolve()), *shlex.split(args.args)]  # fmt: skip
    with ExitStack() as stack:
        trees = {"this checkout": ROOT}
        if args.base:
            trees = {args.base: stack.enter_context(worktree(args.base)), **trees}
        for name, tree in trees.items():
            with ServerProcess(arguments, cwd=tree) as server:
                print(f"{name:>14}: {asyncio.run(probe(server, args, image))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
