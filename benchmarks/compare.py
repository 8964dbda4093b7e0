"""`make compare`: every backend side by side, in-process and end to end over gRPC.

For each backend: the model alone at batch 1 and 8 (latency, throughput), then a server started
with that backend (start-up time) driven with single-image requests at concurrency 1 and 16
(p50, p99, images/s). Prints a table and writes JSON and a PNG chart to
``artifacts/<model>/compare/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from benchmarks.ceiling import open_image_model
from benchmarks.loadgen import LoadResult, closed_loop
from benchmarks.process import ServerProcess
from export.catalog import DEFAULT_MODEL, MODEL_NAMES, SAMPLE_IMAGES
from serve.backends import BACKENDS, run_single
from serve.config import DEFAULT_ARTIFACTS
from serve.imaging import ImageLimits, load_image
from serve.loading import backend_defaults
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.repository import ModelEntry, scan_model

__all__ = ["main"]

BATCH_SIZES = (1, 8)
CONCURRENCIES = (1, 16)


@dataclass(frozen=True)
class CompareSettings:
    model: str
    artifacts: Path
    iterations: int
    requests: int
    image: Path

    @property
    def steps_per_backend(self) -> int:
        return len(BATCH_SIZES) * self.iterations + len(CONCURRENCIES) * self.requests


def in_process(
    settings: CompareSettings, backend: str, tick: Callable[[int], object]
) -> list[dict[str, Any]]:
    """The model alone: one instance using every core, as a single request would see it."""
    threads = os.cpu_count() or 1
    model = open_image_model(settings.artifacts, settings.model, backend, threads)
    image = load_image(settings.image.read_bytes(), 0, ImageLimits(), model.preprocessing)
    rows = []
    for batch_size in BATCH_SIZES:
        batch = np.stack([image] * batch_size)
        for _ in range(3):
            # warm-up: allocation, and TorchScript's profiling runs per shape
            run_single(model.backend, batch)
        seconds = []
        for _ in range(settings.iterations):
            started = time.perf_counter()
            run_single(model.backend, batch)
            seconds.append(time.perf_counter() - started)
            tick(1)
        median = statistics.median(seconds)
        rows.append({"batch": batch_size, "latency_ms": round(median * 1000, 2),
                     "images_per_s": round(batch_size / median, 1)})  # fmt: skip
    return rows


def end_to_end(
    settings: CompareSettings, backend: str, tick: Callable[[int], object]
) -> dict[str, Any]:
    """A real server with ``backend``, single-image tutorial requests at each concurrency."""
    arguments = [
        "--model",
        settings.model,
        "--backend",
        backend,
        "--artifacts",
        str(settings.artifacts),
    ]
    with ServerProcess(arguments) as server:
        runs = asyncio.run(_drive(server.address, settings, lambda: tick(1)))
        return {"startup_s": round(server.startup_seconds, 2), "runs": [r.summary() for r in runs]}


async def _drive(
    address: str, settings: CompareSettings, tick: Callable[[], object]
) -> list[LoadResult]:
    request = inference_pb2.InferenceRequest(image=[settings.image.read_bytes()])
    async with grpc.aio.insecure_channel(address) as channel:
        stub = inference_pb2_grpc.InferenceServerStub(channel)

        async def send() -> int:
            await stub.inference(request, timeout=60)
            return 1

        for _ in range(8):
            await send()  # warm-up: connection and first batches
        return [
            await closed_loop(send, concurrency, requests=settings.requests, on_request=tick)
            for concurrency in CONCURRENCIES
        ]


def model_backends(settings: CompareSettings) -> list[str]:
    """The backends the model's files can run on, as the server's repository scan finds them."""
    entry = scan_model(settings.artifacts, settings.model)
    if not isinstance(entry, ModelEntry):
        raise entry.error
    return list(entry.backends)


def compare(settings: CompareSettings, backends: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "model": settings.model,
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "backends": {},
    }
    total = settings.steps_per_backend * len(backends)
    with tqdm(total=total, desc=f"compare {settings.model}", unit="step") as progress:
        for backend in backends:
            progress.set_postfix_str(backend)
            results["backends"][backend] = {
                "in_process": in_process(settings, backend, progress.update),
                "end_to_end": end_to_end(settings, backend, progress.update),
                "server_defaults": asdict(backend_defaults(backend, os.cpu_count() or 1)),
            }
    return results


def format_table(results: dict[str, Any]) -> str:
    header = ["backend", "start-up s"]
    header += [f"b{b} ms" for b in BATCH_SIZES] + [f"b{b} img/s" for b in BATCH_SIZES]
    header += [f"c{c} {m}" for c in CONCURRENCIES for m in ("p50 ms", "p99 ms", "img/s")]
    lines = [f"{results['model']} on {results['cores']} cores, {results['date']}",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
    for backend, data in results["backends"].items():
        cells = [backend, f"{data['end_to_end']['startup_s']:.2f}"]
        cells += [f"{row['latency_ms']:.1f}" for row in data["in_process"]]
        cells += [f"{row['images_per_s']:.0f}" for row in data["in_process"]]
        for run in data["end_to_end"]["runs"]:
            cells += [f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}", f"{run['images_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(results["backends"])
    data = list(results["backends"].values())
    series = {
        f"in-process batch {b}": [d["in_process"][i]["images_per_s"] for d in data]
        for i, b in enumerate(BATCH_SIZES)
    }
    for i, c in enumerate(CONCURRENCIES):
        series[f"gRPC concurrency {c}"] = [d["end_to_end"]["runs"][i]["images_per_s"] for d in data]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        axes.bar([x + offset * width for x in range(len(backends))], values, width, label=label)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(backends))], backends)
    axes.set_ylabel("images / s")
    axes.set_title(f"{results['model']}: throughput by backend ({results['cores']} cores)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES)
    parser.add_argument(
        "--backends",
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: each the model has a file for)",
    )
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument(
        "--iterations", type=int, default=30, help="timed model calls per batch size"
    )
    parser.add_argument("--requests", type=int, default=300, help="gRPC requests per concurrency")
    parser.add_argument("--image", type=Path, default=SAMPLE_IMAGES / "cat.jpg")
    args = parser.parse_args(argv)
    settings = CompareSettings(
        args.model, args.artifacts, args.iterations, args.requests, args.image
    )
    backends = args.backends.split(",") if args.backends else model_backends(settings)
    results = compare(settings, [b for b in backends if b])
    folder = args.artifacts / args.model / "compare"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "compare.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, folder / "compare.png")
    print(format_table(results))
    print(f"written: {folder / 'compare.json'}, {folder / 'compare.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
