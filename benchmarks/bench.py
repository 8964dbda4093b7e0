"""`python -m benchmarks.bench`: a closed-loop load generator for a torchgrpc server (`make bench`).

Drives a running server (`--server HOST:PORT`) or one it starts itself (`--start`, with `--model`,
`--backend` and `--workers`) through the tutorial API, the Classifier API or KServe v2's ModelInfer:
`--api kserve` sends the encoded images as a BYTES tensor, `--api kserve-fp32` the pre-processed
FP32 tensor (the server decodes nothing), both in raw form as tritonclient sends them.
A secured server is driven with the client's options: `--tls-ca`, `--tls-cert/--tls-key`,
`--token` or `--token-file`.
`--in-process` measures the ceiling instead: the same decode + pre-process + model work with no
RPC. `--sweep 1,4,16,64` runs several concurrencies and writes latency-against-throughput as a PNG
and the CSV behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image
from tqdm import tqdm

from benchmarks.loadgen import LoadResult, SendOne, closed_loop
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, SAMPLE_IMAGES
from serve.backends import BACKENDS
from serve.client.channels import (
    PLAINTEXT,
    ChannelSecurity,
    add_security_arguments,
    open_aio_channel,
    security_from_args,
)
from serve.config import DEFAULT_ARTIFACTS
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2 as kserve_pb2
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_pb2_grpc
from serve.pb.torchgrpc.v1 import classifier_pb2, classifier_pb2_grpc
from serve.services.kserve_tensors import serialize_bytes_tensor

__all__ = ["APIS", "kserve_request", "main", "measure", "run_load", "sender"]

WARM_UP_SECONDS = 1.5


def _tutorial(channel: grpc.aio.Channel, images: list[bytes], model: str) -> SendOne:
    stub = inference_pb2_grpc.InferenceServerStub(channel)
    request = inference_pb2.InferenceRequest(image=images)

    async def send() -> int:
        reply = await stub.inference(request, timeout=120)
        return len(reply.pred)

    return send


def _classify(channel: grpc.aio.Channel, images: list[bytes], model: str) -> SendOne:
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    request = classifier_pb2.ClassifyRequest(images=images, top_k=5, model=model)

    async def send() -> int:
        reply = await stub.Classify(request, timeout=120)
        return len(reply.classifications)

    return send


def _list_models(channel: grpc.aio.Channel, images: list[bytes], model: str) -> SendOne:
    """No image work at all: the floor that gRPC and asyncio alone put under every request."""
    stub = classifier_pb2_grpc.ClassifierStub(channel)
    request = classifier_pb2.ListModelsRequest()

    async def send() -> int:
        await stub.ListModels(request, timeout=120)
        return 0

    return send


KServeInput = tuple[kserve_pb2.ModelInferRequest.InferInputTensor, bytes]


def _encoded_images(images: list[bytes], model: str) -> KServeInput:
    """The input ``image``: BYTES [N, 1], one encoded image a row."""
    rows = np.empty((len(images), 1), dtype=object)
    rows[:, 0] = images
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=rows.shape
    )
    return tensor, serialize_bytes_tensor(rows)


def _preprocessed_images(images: list[bytes], model: str) -> KServeInput:
    """The input ``input``: FP32 [N, 3, H, W], the images already pre-processed as the model's
    config.pbtxt says (its zoo entry's preprocessing, which export writes there)."""
    from export.zoo import get_spec  # imports torch: only for the clients that need it

    preprocessing = get_spec(model).preprocessing
    batch = np.stack(
        [preprocessing.apply(Image.open(io.BytesIO(data)).convert("RGB")) for data in images]
    )
    tensor = kserve_pb2.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=batch.shape
    )
    return tensor, batch.astype("<f4", copy=False).tobytes()


# The KServe APIs, by the input tensor each sends.
_KSERVE_INPUTS: dict[str, Callable[[list[bytes], str], KServeInput]] = {
    "kserve": _encoded_images,
    "kserve-fp32": _preprocessed_images,
}


def kserve_request(api: str, images: list[bytes], model: str = "") -> kserve_pb2.ModelInferRequest:
    """What ``api`` ("kserve" or "kserve-fp32") sends to ModelInfer: ``images`` as one input
    tensor in raw form, naming no output (the server answers with all of them); ``model`` ""
    stands for ``DEFAULT_MODEL``."""
    model = model or DEFAULT_MODEL
    tensor, raw = _KSERVE_INPUTS[api](images, model)
    return kserve_pb2.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[raw])


def _kserve(api: str) -> Callable[[grpc.aio.Channel, list[bytes], str], SendOne]:
    def kserve_sender(channel: grpc.aio.Channel, images: list[bytes], model: str) -> SendOne:
        stub = kserve_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = kserve_request(api, images, model)  # pre-processed here, once, if at all

        async def send() -> int:
            reply = await stub.ModelInfer(request, timeout=120)
            return int(reply.outputs[0].shape[0])  # the rows answered

        return send

    return kserve_sender


APIS: dict[str, Callable[[grpc.aio.Channel, list[bytes], str], SendOne]] = {
    "tutorial": _tutorial,
    "classify": _classify,
    "list-models": _list_models,
    "kserve": _kserve("kserve"),
    "kserve-fp32": _kserve("kserve-fp32"),
}


def sender(api: str, channel: grpc.aio.Channel, images: list[bytes], model: str = "") -> SendOne:
    return APIS[api](channel, images, model)


async def run_load(
    address: str,
    api: str,
    images: list[bytes],
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    model: str = "",
    progress: bool = True,
    warm_up: float | None = None,
    security: ChannelSecurity = PLAINTEXT,
) -> LoadResult:
    """One closed-loop run against ``address``, after a warm-up at the same concurrency of
    ``warm_up`` seconds (default ``WARM_UP_SECONDS``)."""
    async with open_aio_channel(address, security) as channel:
        send = sender(api, channel, images, model)
        # Warm up at the measured concurrency: the first batches of each size allocate the
        # model's memory arenas, and that one-off cost is not the server's steady state.
        await closed_loop(
            send, concurrency, duration=WARM_UP_SECONDS if warm_up is None else warm_up
        )
        with tqdm(total=requests, desc=f"c{concurrency}", unit="req", disable=not progress,
                  file=sys.stderr, leave=False) as bar:  # fmt: skip
            return await closed_loop(
                send, concurrency, requests=requests, duration=duration,
                on_request=lambda: bar.update(1),
            )  # fmt: skip


def measure(
    address: str,
    api: str,
    images: list[bytes],
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    warm_up: float | None = None,
    security: ChannelSecurity = PLAINTEXT,
) -> LoadResult:
    """``run_load`` from synchronous code, with no progress bar: for scripts that take figures."""
    return asyncio.run(
        run_load(address, api, images, concurrency, requests=requests, duration=duration,
                 progress=False, warm_up=warm_up, security=security)
    )  # fmt: skip


@contextmanager
def _target(args: argparse.Namespace) -> Iterator[str]:
    if not args.start:
        yield args.server
        return
    arguments = ["--model", args.model, "--backend", args.backend,
                 "--artifacts", str(args.artifacts), "--workers", str(args.workers)]  # fmt: skip
    with ServerProcess(arguments) as server:
        print(f"started {args.backend} server in {server.startup_seconds:.1f} s", file=sys.stderr)
        yield server.address


def _in_process(args: argparse.Namespace, image: bytes) -> dict[str, Any]:
    from benchmarks.ceiling import measure_ceiling, measure_single_image_latency

    backend = args.backend if args.backend != "auto" else "onnxruntime"
    with tqdm(desc="in-process", unit="img", file=sys.stderr, leave=False) as bar:
        ceiling = measure_ceiling(
            args.artifacts, args.model, backend, image, seconds=args.duration or 10.0,
            images_per_request=args.images_per_request, on_image=bar.update,
        )  # fmt: skip
    latency = measure_single_image_latency(args.artifacts, args.model, backend, image)
    return {
        "mode": "in-process",
        "backend": backend,
        "instances": ceiling.instances,
        "threads_per_instance": ceiling.threads_per_instance,
        "images_per_s": round(ceiling.images_per_s, 2),
        "single_image_latency_ms": round(latency * 1000, 2),
    }


def _write_sweep(runs: list[dict[str, Any]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "sweep.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
        axes.plot([r["images_per_s"] for r in runs], [r[key] for r in runs], style, label=key)
    for run in runs:
        axes.annotate(f"c{run['concurrency']}", (run["images_per_s"], run["p50_ms"]))
    axes.set_xlabel("throughput, images / s")
    axes.set_ylabel("latency, ms")
    axes.set_title("latency against throughput")
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / "sweep.png", dpi=100)
    plt.close(figure)


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    print(" ".join(f"{key}={value}" for key, value in summary.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--server", default="localhost:50052", help="HOST:PORT to drive")
    target.add_argument("--start", action="store_true", help="start a server to drive")
    target.add_argument("--in-process", action="store_true", help="measure the ceiling, no RPC")
    parser.add_argument("--api", choices=sorted(APIS), default="tutorial")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    parser.add_argument("--workers", type=int, default=1, help="server processes (with --start)")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--concurrency", type=int, default=16)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, help="seconds per run (default 10)")
    length.add_argument("--requests", type=int, help="requests per run")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--image", type=Path, default=SAMPLE_IMAGES / "cat.jpg")
    parser.add_argument("--sweep", help="comma-separated concurrencies, e.g. 1,4,16,64")
    parser.add_argument("--out", type=Path, help="folder for the sweep's CSV and PNG")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    add_security_arguments(parser)
    args = parser.parse_args(argv)
    try:
        security = security_from_args(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    image = args.image.read_bytes()
    if args.in_process:
        _print(_in_process(args, image), args.json)
        return 0
    duration = args.duration if args.requests is None and args.duration else None
    if args.requests is None and duration is None:
        duration = 10.0
    concurrencies = [int(c) for c in args.sweep.split(",")] if args.sweep else [args.concurrency]
    runs = []
    with _target(args) as address:
        for concurrency in concurrencies:
            result = asyncio.run(run_load(
                address, args.api, [image] * args.images_per_request, concurrency,
                requests=args.requests, duration=duration, model="" if args.api == "tutorial"
                else args.model, progress=not args.json, security=security,
            ))  # fmt: skip
            runs.append({"api": args.api, **result.summary()})
            _print(runs[-1], args.json)
    if args.sweep:
        folder = args.out or args.artifacts / args.model / "bench"
        _write_sweep(runs, folder)
        print(f"written: {folder / 'sweep.csv'}, {folder / 'sweep.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
