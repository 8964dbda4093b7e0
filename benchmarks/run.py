"""`make benchmark`: torchgrpc against its targets and the tutorial's design, in one run.

Measures, side by side on this machine, and writes benchmarks/RESULTS.md:
- the in-process ceiling (decode + pre-process + model, no RPC) for EfficientNet-Lite0 and ResNet34;
- torchgrpc over gRPC (one 451x300 JPEG per request, the tutorial API): concurrency 1 (p50),
  32 (images/s), 256 (no failures), and its memory before and after 20,000 requests;
- the same c1 and c32 through the Classifier API and KServe v2 (the JPEG as a BYTES tensor, and
  pre-processed as an FP32 tensor), and through h2load (benchmarks/h2load.py) for the tutorial API
  and KServe BYTES, where it is installed;
- the server's CPU time per request at 2 and 10 requests/s against saturation's
  (benchmarks/idle_cpu.py);
- the tutorial-design server (benchmarks/tutorial_server.py) at concurrency 32;
- a bare grpc.aio server (benchmarks/bare_aio_server.py) at concurrency 1 and 32, with the
  in-process runs' threading: the floor that gRPC and the hand-offs to a thread set under any
  grpc.aio server, torchgrpc included;
- ResNet34 over gRPC at concurrency 16.

Each figure a target compares with an in-process one (c1 latency, c32 and ResNet34 c16
throughput) is measured in slices alternating with it: this machine's speed drifts by more than
the targets' margins within a minute. Every API and client at c1 (and at c32) runs in the same
slices, so they are compared with each other on the same machine, too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import grpc
import onnxruntime
import torch

import benchmarks.bench
from benchmarks import h2load
from benchmarks.bench import kserve_request, measure
from benchmarks.ceiling import CeilingRunner, LoneImage
from benchmarks.draft import measure_draft
from benchmarks.idle_cpu import IdleCpu, measure_idle_cpu
from benchmarks.loadgen import LoadResult, SendOne, closed_loop
from benchmarks.process import ServerProcess
from export.catalog import SAMPLE_IMAGES
from export.pipeline import export_model
from export.zoo import WeightsUnavailable
from serve.config import DEFAULT_ARTIFACTS
from serve.errors import ArtifactError
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.provenance import check_export

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
IMAGE = SAMPLE_IMAGES / "cat.jpg"
# The APIs measured at c1 and c32 (benchmarks.bench's names), as RESULTS.md names them.
API_LABELS = {
    "tutorial": "tutorial",
    "classify": "Classifier",
    "kserve": "KServe BYTES",
    "kserve-fp32": "KServe FP32",
}
# The APIs h2load drives too.
H2LOAD_APIS = ("tutorial", "kserve")
H2LOAD_MISSING = (
    f"h2load is not installed ({h2load.INSTALL_HINT}): the c1 and c32 figures through h2load "
    "are not measured"
)

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    target: str
    measured: str
    passed: bool


def ensure_exported(model: str, artifacts: Path) -> str:
    """Uses the current export, else exports; ResNet34 falls back to random weights where its
    ImageNet weights can't be had (the same work, so the same speed)."""
    try:
        source = check_export(artifacts / model, model)
    except ArtifactError:  # stale or modified: exported again below
        source = None
    if source is not None:
        return source
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        return export_model(model, None, artifacts).manifest.weights_source
    except WeightsUnavailable:
        return export_model(model, "random", artifacts).manifest.weights_source


def load(address: str, concurrency: int, seconds: float) -> LoadResult:
    print(f"  {address}: concurrency {concurrency} for {seconds:.0f} s", flush=True)
    return measure(address, "tutorial", [IMAGE.read_bytes()], concurrency, duration=seconds)


# ---- Slices: loads measured in turn with an in-process reference ----

# One slice of one client's load on one server: it runs when called and returns what it measured.
Slice = Callable[[], LoadResult]


@dataclass(frozen=True)
class Length:
    """A slice's length: ``requests`` requests or ``duration`` seconds, after ``warm_up`` seconds
    of the same load, untimed."""

    warm_up: float
    requests: int | None = None
    duration: float | None = None


def loadgen_slice(address: str, api: str, image: bytes, concurrency: int, length: Length) -> Slice:
    """``api`` driven by our load generator (benchmarks.loadgen), one image a request."""
    return partial(measure, address, api, [image], concurrency, requests=length.requests,
                   duration=length.duration, warm_up=length.warm_up)  # fmt: skip


def h2load_call(api: str, image: bytes) -> tuple[str, bytes]:
    """The method h2load calls to drive ``api`` ("tutorial", "kserve" or "kserve-fp32") and the
    serialized request it sends, one image."""
    if api == "tutorial":
        tutorial = inference_pb2.InferenceRequest(image=[image])
        return "/InferenceServer/inference", tutorial.SerializeToString()
    kserve = kserve_request(api, [image])
    return "/inference.GRPCInferenceService/ModelInfer", kserve.SerializeToString()


def h2load_slice(address: str, api: str, image: bytes, concurrency: int, length: Length) -> Slice:
    """``api`` driven by h2load (benchmarks/h2load.py), one image a request."""
    method, request = h2load_call(api, image)
    return partial(h2load.measure, address, method, request, concurrency,
                   requests=length.requests, duration=length.duration,
                   warm_up=length.warm_up)  # fmt: skip


def h2load_installed() -> bool:
    return shutil.which("h2load") is not None


def h2load_key(api: str) -> str:
    """The name of ``api``'s figures through h2load, beside its load generator's (``api``)."""
    return f"{api} (h2load)"


def api_slices(address: str, image: bytes, concurrency: int, length: Length) -> dict[str, Slice]:
    """Every API of ``API_LABELS`` through the load generator, by its name, and those of
    ``H2LOAD_APIS`` through h2load too where it is installed, by ``h2load_key``."""
    slices = {api: loadgen_slice(address, api, image, concurrency, length) for api in API_LABELS}
    if h2load_installed():
        for api in H2LOAD_APIS:
            slices[h2load_key(api)] = h2load_slice(address, api, image, concurrency, length)
    return slices


def in_turn(
    contenders: Mapping[str, Slice], reference: Callable[[], T], slices: int
) -> tuple[dict[str, LoadResult], list[T]]:
    """``slices`` rounds, each running every contender once, then the reference: each
    contender's slices folded into one result, and the reference's figures, a list item each."""
    print(f"  {slices} slices of {', '.join(contenders)}, each beside the in-process run",
          flush=True)  # fmt: skip
    results: dict[str, LoadResult] = {}
    references: list[T] = []
    for _ in range(slices):
        for name, run_slice in contenders.items():
            result = run_slice()
            results.setdefault(name, LoadResult(concurrency=result.concurrency)).add(result)
        references.append(reference())
    return results, references


# Throughput against the ceiling, too, is measured in alternating slices of one run; each server
# slice starts with the load generator's warm-up, each ceiling slice with one as long.
THROUGHPUT_SLICE_SECONDS = 3.0


def throughput_slice() -> Length:
    """The length of each slice of throughput (read when called: tests shorten it)."""
    return Length(warm_up=benchmarks.bench.WARM_UP_SECONDS, duration=THROUGHPUT_SLICE_SECONDS)


@dataclass(frozen=True)
class Throughput:
    # Each contender's images/s over all its slices, by name.
    results: dict[str, LoadResult]
    ceiling_images_per_s: float


def throughput_beside_ceiling(
    ceiling: CeilingRunner, contenders: Mapping[str, Slice], slices: int
) -> Throughput:
    """Each contender's throughput (slices of ``throughput_slice()``) and the in-process
    ceiling's, in alternating slices of one run."""

    def ceiling_slice() -> tuple[int, float]:
        ceiling.run(benchmarks.bench.WARM_UP_SECONDS)
        return ceiling.run(THROUGHPUT_SLICE_SECONDS)

    results, runs = in_turn(contenders, ceiling_slice, slices)
    images, seconds = (sum(figures) for figures in zip(*runs, strict=True))
    return Throughput(results, images / seconds)


# c1 is timed in slices alternating with the in-process single-image run, so both see the same
# machine: this one drifts by more than the 1.5 ms the target allows within a minute.
C1_SLICE_REQUESTS = 40
# Untimed requests (or runs) after each switch, about 0.1 s: the other side's threads are still
# winding down (ONNX Runtime's keep spinning for about 40 ms after a run).
C1_SETTLE = 8
# The asyncio client's slices warm up for about as long.
C1_SETTLE_SECONDS = 0.1
C1_SLICE = Length(warm_up=C1_SETTLE_SECONDS, requests=C1_SLICE_REQUESTS)


@dataclass(frozen=True)
class C1Latency:
    # Each contender's latencies over all its slices, by name.
    results: dict[str, LoadResult]
    # The in-process single-image run's, in seconds.
    in_process: list[float]


def _blocking_sender(channel: grpc.Channel, image: bytes) -> SendOne:
    stub = inference_pb2_grpc.InferenceServerStub(channel)
    request = inference_pb2.InferenceRequest(image=[image])

    async def send() -> int:
        # Blocks the event loop, on purpose: at concurrency 1 nothing else runs on it, and no
        # asyncio stands between this client and gRPC, as in the tutorial's.
        return len(stub.inference(request, timeout=60).pred)

    return send


async def _settled(send: SendOne, requests: int) -> LoadResult:
    await closed_loop(send, 1, requests=C1_SETTLE)
    return await closed_loop(send, 1, requests=requests)


def blocking_slice(channel: grpc.Channel, image: bytes) -> Slice:
    """The tutorial API at c1 through a blocking client, as the tutorial's, on ``channel``."""
    send = _blocking_sender(channel, image)
    return lambda: asyncio.run(_settled(send, C1_SLICE_REQUESTS))


def c1_beside_in_process(
    lone: LoneImage, contenders: Mapping[str, Slice], slices: int
) -> C1Latency:
    """Each contender's latency at concurrency 1 (slices of ``C1_SLICE``) and the in-process
    single-image latency, in alternating slices of one run, after one untimed round of each
    contender."""
    for run_slice in contenders.values():
        run_slice()

    def lone_slice() -> list[float]:
        lone.time(C1_SETTLE)
        return lone.time(C1_SLICE_REQUESTS)

    results, runs = in_turn(contenders, lone_slice, slices)
    return C1Latency(results, [seconds for run in runs for seconds in run])


# ---- Reporting ----


def api_table(c1: Mapping[str, LoadResult], c32: Mapping[str, LoadResult]) -> list[str]:
    """A Markdown table: each API of ``API_LABELS`` by its c1 p50 and c32 images/s through the
    load generator and, in two more columns if h2load measured any API, through h2load."""
    with_h2load = any(h2load_key(api) in figures for api in API_LABELS for figures in (c1, c32))
    header = ["API", "c1 p50 ms", "c32 img/s"]
    if with_h2load:
        header += ["c1 p50 ms, h2load", "c32 img/s, h2load"]
    lines = [_row(header), _row(["---"] * len(header))]
    for api, label in API_LABELS.items():
        keys = [api, h2load_key(api)] if with_h2load else [api]
        cells = [label]
        for key in keys:
            cells.append(f"{c1[key].percentile_ms(50):.2f}" if key in c1 else "-")
            cells.append(f"{c32[key].images_per_second:.1f}" if key in c32 else "-")
        lines.append(_row(cells))
    return lines


def _row(cells: list[str]) -> str:
    return f"| {' | '.join(cells)} |"


def _label(key: str) -> str:
    """A contender's name in RESULTS.md: the API's label and the client."""
    for api, label in API_LABELS.items():
        if key == api:
            return f"{label} API, load generator"
        if key == h2load_key(api):
            return f"{label} API, h2load"
    return key


def h2load_notes(c1: C1Latency, c32: Throughput) -> list[str]:
    """A line per API h2load drove and concurrency: its figure, its ratio to the in-process
    figure of the same slices, and the load generator's beside it."""
    single_ms = statistics.median(c1.in_process) * 1000
    ceiling = c32.ceiling_images_per_s
    lines = []
    for api in H2LOAD_APIS:
        key, label = h2load_key(api), API_LABELS[api]
        if key in c1.results:
            h2, ours = c1.results[key].percentile_ms(50), c1.results[api].percentile_ms(50)
            lines.append(
                f"h2load, {label} API, c1: p50 {h2:.2f} ms = {h2 / single_ms:.2f} x the "
                f"in-process single-image latency (load generator: {ours:.2f} ms = "
                f"{ours / single_ms:.2f} x), {c1.results[key].errors} errors, same slices"
            )
        if key in c32.results:
            h2, ours = c32.results[key].images_per_second, c32.results[api].images_per_second
            lines.append(
                f"h2load, {label} API, c32: {h2:.1f} img/s = {h2 / ceiling:.2f} x the ceiling "
                f"(load generator: {ours:.1f} img/s = {ours / ceiling:.2f} x), "
                f"{c32.results[key].errors} errors, same slices"
            )
    return lines


def idle_cpu_check(figures: IdleCpu) -> Check:
    paced = ", ".join(
        f"{phase.load} {phase.cpu_ms_per_request:.1f} ms ({figures.ratio(phase):.2f} x)"
        for phase in figures.paced
    )
    return Check(
        "CPU per request at 2 and 10 req/s <= 1.5 x CPU per request at saturation",
        f"{paced} vs {figures.saturation.load} {figures.saturation.cpu_ms_per_request:.1f} ms "
        "CPU/request",
        figures.worst_ratio <= 1.5,
    )


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    notes: list[str]
    # The section "c1 and c32 of all three APIs from one run".
    apis: list[str]


def run(artifacts: Path, seconds: float, soak_requests: int) -> Report:
    notes: list[str] = []
    image = IMAGE.read_bytes()
    lite0 = "efficientnet_lite0"
    ceiling = CeilingRunner(artifacts, lite0, "onnxruntime", image)
    slices = max(1, round(seconds / THROUGHPUT_SLICE_SECONDS))
    lone = LoneImage(artifacts, lite0, "onnxruntime", image)
    draft = measure_draft(artifacts, lite0)
    common = ["--artifacts", str(artifacts)]
    if not h2load_installed():
        notes.append(H2LOAD_MISSING)
    with ServerProcess(["--model", "efficientnet_lite0", *common]) as server:
        notes.append(f"torchgrpc start-up (Lite0, auto backend): {server.startup_seconds:.1f} s")
        floor = measure(server.address, "list-models", [], 1, duration=5)
        with (
            ServerProcess(common, module="benchmarks.bare_aio_server") as bare,
            grpc.insecure_channel(server.address) as channel,
            grpc.insecure_channel(bare.address) as bare_channel,
        ):
            c1_latency = c1_beside_in_process(lone, {
                "blocking": blocking_slice(channel, image),
                **api_slices(server.address, image, 1, C1_SLICE),
                "bare": blocking_slice(bare_channel, image),
            }, max(1, round(seconds)))  # fmt: skip
        c1 = c1_latency.results["blocking"]
        single = statistics.median(c1_latency.in_process)
        notes.append(
            f"Lite0 single image in-process, all cores on it: {single * 1000:.2f} ms p50 "
            f"({len(c1_latency.in_process)} runs, in slices alternating with the c1 requests)"
        )
        bare_arguments = [*common, "--instances", str(ceiling.instances)]
        with ServerProcess(bare_arguments, module="benchmarks.bare_aio_server") as bare:
            lite0_c32 = throughput_beside_ceiling(ceiling, {
                **api_slices(server.address, image, 32, throughput_slice()),
                "bare": loadgen_slice(bare.address, "tutorial", image, 32, throughput_slice()),
            }, slices)  # fmt: skip
        c32 = lite0_c32.results["tutorial"]
        notes.append(
            f"Lite0 in-process ceiling: {lite0_c32.ceiling_images_per_s:.1f} img/s "
            f"({ceiling.instances} threads, each decoding and running its own ONNX Runtime "
            f"session with {ceiling.threads} intra-op thread), in {slices} slices of "
            f"{THROUGHPUT_SLICE_SECONDS:.0f} s alternating with the server's at c32 (every API "
            "and client in each slice)"
        )
        c256 = load(server.address, 256, seconds)
        # CPU per request when nearly idle (benchmarks/idle_cpu.py): its target row below.
        print("  CPU per request at saturation, idle and at 2 and 10 requests/s", flush=True)
        idle_cpu = measure_idle_cpu(server.address, server.pid, image, seconds=seconds,
                                    saturation_seconds=seconds,
                                    idle_seconds=min(5.0, seconds))  # fmt: skip
        rss_before = server.rss_bytes()
        print(f"  soak: {soak_requests:,} requests at concurrency 32", flush=True)
        soak = measure(server.address, "tutorial", [image], 32, requests=soak_requests)
        rss_after = server.rss_bytes()
    with ServerProcess(["--model", "efficientnet_lite0", *common],
                       module="benchmarks.tutorial_server") as tutorial:  # fmt: skip
        baseline = load(tutorial.address, 32, seconds)

    resnet_weights = check_export(artifacts / "resnet34", "resnet34")
    resnet_ceiling = CeilingRunner(artifacts, "resnet34", "onnxruntime", image)
    with ServerProcess(["--model", "resnet34", *common]) as server:
        resnet34_c16 = throughput_beside_ceiling(resnet_ceiling, {
            "tutorial": loadgen_slice(server.address, "tutorial", image, 16, throughput_slice()),
        }, slices)  # fmt: skip
        resnet_c16 = resnet34_c16.results["tutorial"]
    notes.append(
        f"ResNet34 in-process ceiling: {resnet34_c16.ceiling_images_per_s:.1f} img/s "
        f"(weights: {resnet_weights}), in slices alternating with the server's at c16"
    )
    notes.append(
        f"gRPC floor: an empty RPC (ListModels) at c1 takes {floor.percentile_ms(50):.2f} ms p50 "
        "round trip: most of the 1.5 ms the c1 target allows over the in-process latency"
    )
    c1_bare = c1_latency.results["bare"]
    bare_gap = c1_bare.percentile_ms(50) - single * 1000
    notes.append(
        f"grpc.aio floor at c1: a bare grpc.aio server (benchmarks/bare_aio_server.py) that "
        f"hands the same in-process work to one thread and does nothing else: c1 p50 "
        f"{c1_bare.percentile_ms(50):.2f} ms, {bare_gap:+.2f} ms over in-process, "
        "in the same slices"
    )
    c32_bare = lite0_c32.results["bare"]
    bare_ratio = c32_bare.images_per_second / lite0_c32.ceiling_images_per_s
    notes.append(
        f"grpc.aio floor at c32: the bare grpc.aio server with the ceiling's threading "
        f"({ceiling.instances} threads, each with its own session) reaches "
        f"{c32_bare.images_per_second:.1f} img/s = {bare_ratio:.2f} x the ceiling, "
        "in the same slices"
    )
    notes += h2load_notes(c1_latency, lite0_c32)
    notes += [f"CPU per request, {' '.join(line.split())}" for line in idle_cpu.lines()]
    for name, result in (("c1, blocking client", c1),
                         ("c1, asyncio client (same slices)", c1_latency.results["tutorial"]),
                         ("c1, bare grpc.aio server (same slices)", c1_bare),
                         *((f"c1, {_label(key)} (same slices)", result)
                           for key, result in c1_latency.results.items()
                           if key not in ("blocking", "tutorial", "bare")),
                         ("c32", c32), ("c32, bare grpc.aio server (same slices)", c32_bare),
                         *((f"c32, {_label(key)} (same slices)", result)
                           for key, result in lite0_c32.results.items()
                           if key not in ("tutorial", "bare")),
                         ("c256", c256), ("soak c32", soak),
                         ("tutorial c32", baseline), ("ResNet34 c16", resnet_c16)):  # fmt: skip
        notes.append(f"{name}: {result.summary()}")

    growth = (rss_after - rss_before) / rss_before
    kserve, kserve_fp32 = lite0_c32.results["kserve"], lite0_c32.results["kserve-fp32"]
    checks = [
        _ratio("Lite0 c32 img/s >= 0.9 x in-process ceiling", c32.images_per_second,
               lite0_c32.ceiling_images_per_s, 0.9,
               beside=f"bare grpc.aio server {bare_ratio:.2f} x"),
        _ratio("Lite0 c32 img/s >= 3 x tutorial-design server at c32", c32.images_per_second,
               baseline.images_per_second, 3.0),
        Check("Lite0 p50 at c1 (blocking client) within 1.5 ms of in-process single-image "
              "latency",
              f"{c1.percentile_ms(50):.2f} ms vs {single * 1000:.2f} ms "
              f"({c1.percentile_ms(50) - single * 1000:+.2f} ms; bare grpc.aio server "
              f"{bare_gap:+.2f} ms)",
              c1.percentile_ms(50) - single * 1000 <= 1.5),
        Check("no failed request at c256", f"{c256.errors} errors in {c256.requests} requests",
              c256.errors == 0 and c256.requests > 0),
        Check(f"memory flat over {soak_requests:,} requests",
              f"RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB "
              f"({growth:+.1%}), {soak.errors} errors", growth < 0.05 and soak.errors == 0),
        Check("JPEG draft mode: faster decode of a 1600x1067 photo, top-1 unchanged",
              f"{draft.full_ms:.1f} ms -> {draft.draft_ms:.1f} ms ({draft.speed_up:.1f} x), "
              f"top-1 {'unchanged' if draft.same_top1 else 'CHANGED'}",
              draft.speed_up > 1.5 and draft.same_top1),
        _ratio("ResNet34 c16 img/s >= 0.9 x its in-process ceiling",
               resnet_c16.images_per_second, resnet34_c16.ceiling_images_per_s, 0.9),
        _ratio("KServe (BYTES) c32 img/s >= 0.95 x tutorial API c32 img/s (same slices)",
               kserve.images_per_second, c32.images_per_second, 0.95),
        Check("KServe FP32 c32 img/s > KServe BYTES c32 img/s (no decode)",
              f"{kserve_fp32.images_per_second:.1f} vs {kserve.images_per_second:.1f} img/s "
              f"= {kserve_fp32.images_per_second / kserve.images_per_second:.2f} x",
              kserve_fp32.images_per_second > kserve.images_per_second),
        idle_cpu_check(idle_cpu),
    ]  # fmt: skip
    return Report(checks, notes, api_table(c1_latency.results, lite0_c32.results))


def _ratio(target: str, value: float, reference: float, needed: float, beside: str = "") -> Check:
    ratio = value / reference if reference else 0.0
    measured = f"{value:.1f} vs {reference:.1f} = {ratio:.2f} x"
    if beside:
        measured += f" ({beside})"
    return Check(target, measured, ratio >= needed)


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown CPU",
    )  # fmt: skip
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, no GPU; Python "
        f"{platform.python_version()}, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}"
    )


def write_results(report: Report, seconds: float) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Produced by `make benchmark` (`python -m benchmarks.run`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {machine()}.",
        f"Client and server on the same machine; one 451x300 JPEG per request "
        f"(export/sample_images/cat.jpg), tutorial API unless a row names another; {seconds:.0f} s "
        "per run.",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
        *(f"| {c.target} | {c.measured} | {'yes' if c.passed else 'NO'} |" for c in report.checks),
        "",
        "## Raw figures",
        "",
        *(f"- {note}" for note in report.notes),
        "",
        "## c1 and c32 of all three APIs from one run",
        "",
        "Lite0, one image a request. c1: p50 over the c1 slices beside the in-process run; c32: "
        "images/s over the c32 slices beside the ceiling; every API and client in each slice. "
        "The load generator is benchmarks.loadgen (asyncio, one channel); h2load "
        "(benchmarks/h2load.py) keeps as many calls in flight on one connection.",
        "",
        *report.apis,
        "",
    ]
    text = "\n".join(lines)
    RESULTS.write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each run")
    parser.add_argument("--soak-requests", type=int, default=20_000)
    args = parser.parse_args()
    for model in ("efficientnet_lite0", "resnet34"):
        ensure_exported(model, args.artifacts)
    report = run(args.artifacts, args.seconds, args.soak_requests)
    print(write_results(report, args.seconds))
    return 0 if all(c.passed for c in report.checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
