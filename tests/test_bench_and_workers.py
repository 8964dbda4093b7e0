"""The load generator's modes and APIs, the benchmark's slices and tables, the tutorial-design
baseline, and --workers on one port."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from benchmarks.bench import kserve_request
from benchmarks.loadgen import LoadResult
from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.pb import inference_pb2, inference_pb2_grpc
from serve.pb.kserve import grpc_service_pb2_grpc as kserve_pb2_grpc
from tests.conftest import CAT_JPG, EGYPTIAN_CAT, ROOT, TEST_ARTIFACTS, ServerThread


def bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", *arguments], capture_output=True, text=True,
        cwd=ROOT, timeout=300, check=True,
    )  # fmt: skip


def tutorial_predictions(address: str) -> list[int]:
    with grpc.insecure_channel(address) as channel:
        reply = inference_pb2_grpc.InferenceServerStub(channel).inference(
            inference_pb2.InferenceRequest(image=[CAT_JPG.read_bytes()] * 2), timeout=60
        )
    return list(reply.pred)


@pytest.mark.parametrize("api", ["tutorial", "classify", "kserve", "kserve-fp32"])
def test_bench_drives_each_api_and_prints_json(server: ServerThread, api: str) -> None:
    done = bench("--server", server.address, "--api", api, "--requests", "12",
                 "--concurrency", "3", "--images-per-request", "2", "--json")  # fmt: skip
    summary = json.loads(done.stdout)
    assert (summary["api"], summary["requests"], summary["errors"]) == (api, 12, 0)
    assert summary["images"] == 24  # the rows answered, counted from each reply
    assert summary["images_per_s"] == pytest.approx(2 * summary["requests_per_s"], rel=1e-3)
    assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]


@pytest.mark.parametrize(("api", "datatype", "shape"), [
    ("kserve", "BYTES", [2, 1]),
    ("kserve-fp32", "FP32", [2, 3, 224, 224]),
])  # fmt: skip
def test_bench_kserve_requests_are_raw_tensors_the_model_classifies(
    channel: grpc.Channel, api: str, datatype: str, shape: list[int]
) -> None:
    request = kserve_request(api, [CAT_JPG.read_bytes()] * 2)
    (tensor,) = request.inputs
    assert (request.model_name, tensor.datatype, list(tensor.shape)) == (
        "efficientnet_lite0", datatype, shape,
    )  # fmt: skip
    assert not tensor.HasField("contents") and len(request.raw_input_contents) == 1
    reply = kserve_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert [(out.name, out.datatype, list(out.shape)) for out in reply.outputs] == [
        ("probabilities", "FP32", [2, 1000])
    ]
    probabilities = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(2, 1000)
    assert probabilities.argmax(axis=1).tolist() == [EGYPTIAN_CAT, EGYPTIAN_CAT]


def test_bench_sweep_writes_csv_and_chart(server: ServerThread, tmp_path: Path) -> None:
    done = bench("--server", server.address, "--sweep", "1,4", "--requests", "8",
                 "--out", str(tmp_path))  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "sweep.csv").read_text().splitlines()))
    assert [row["concurrency"] for row in rows] == ["1", "4"]
    assert all(row["errors"] == "0" for row in rows)
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert "concurrency=4" in done.stdout
    assert "c4" in done.stderr  # the progress bar


def test_bench_in_process_measures_the_ceiling(lite0_export: ExportResult) -> None:
    done = bench("--in-process", "--backend", "onnxruntime", "--duration", "1", "--json",
                 "--artifacts", str(TEST_ARTIFACTS))  # fmt: skip
    summary = json.loads(done.stdout)
    assert summary["mode"] == "in-process"
    assert summary["images_per_s"] > 0 and summary["single_image_latency_ms"] > 0


@pytest.mark.parametrize("module", ["benchmarks.tutorial_server", "benchmarks.bare_aio_server"])
def test_reference_servers_serve_the_same_answers(lite0_export: ExportResult, module: str) -> None:
    arguments = ["--artifacts", str(TEST_ARTIFACTS)]
    with ServerProcess(arguments, module=module) as reference:
        assert tutorial_predictions(reference.address) == [EGYPTIAN_CAT, EGYPTIAN_CAT]


def test_workers_share_one_port(lite0_export: ExportResult, tmp_path: Path) -> None:
    arguments = ["--artifacts", str(TEST_ARTIFACTS), "--workers", "2", "--instances", "1",
                 "--threads", "1", "--decode-threads", "1"]  # fmt: skip
    with ServerProcess(arguments) as server:
        children = [
            pid
            for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            if b"spawn_main"
            in Path(f"/proc/{pid}/cmdline").read_bytes()  # not the resource tracker
        ]
        assert len(children) == 2
        for _ in range(3):  # new connections each time: the kernel spreads them over workers
            assert tutorial_predictions(server.address) == [EGYPTIAN_CAT, EGYPTIAN_CAT]
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)


def test_benchmark_times_c1_in_slices_beside_the_in_process_run(
    server: ServerThread, lite0_export: ExportResult
) -> None:
    from benchmarks.ceiling import LoneImage
    from benchmarks.run import (
        C1_SLICE,
        C1_SLICE_REQUESTS,
        blocking_slice,
        c1_beside_in_process,
        h2load_installed,
        h2load_key,
        h2load_slice,
        loadgen_slice,
    )

    image = CAT_JPG.read_bytes()
    lone = LoneImage(TEST_ARTIFACTS, "efficientnet_lite0", "onnxruntime", image)
    arguments = ["--artifacts", str(TEST_ARTIFACTS)]
    with (
        ServerProcess(arguments, module="benchmarks.bare_aio_server") as bare,
        grpc.insecure_channel(server.address) as channel,
        grpc.insecure_channel(bare.address) as bare_channel,
    ):
        contenders = {
            "blocking": blocking_slice(channel, image),
            "kserve": loadgen_slice(server.address, "kserve", image, 1, C1_SLICE),
            "bare": blocking_slice(bare_channel, image),
        }
        if h2load_installed():
            contenders[h2load_key("kserve")] = h2load_slice(
                server.address, "kserve", image, 1, C1_SLICE
            )
        measured = c1_beside_in_process(lone, contenders, slices=2)
    assert list(measured.results) == list(contenders)
    for result in measured.results.values():
        assert (result.concurrency, result.requests, result.images, result.errors) == (
            1, 2 * C1_SLICE_REQUESTS, 2 * C1_SLICE_REQUESTS, 0,
        )  # fmt: skip
        assert result.seconds > 0 and result.percentile_ms(50) > 0
    assert len(measured.in_process) == 2 * C1_SLICE_REQUESTS
    assert all(seconds > 0 for seconds in measured.in_process)


def test_benchmark_measures_throughput_in_slices_beside_the_ceiling(
    server: ServerThread, lite0_export: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.bench
    import benchmarks.run
    from benchmarks.ceiling import CeilingRunner
    from benchmarks.run import h2load_installed, h2load_key, h2load_slice, loadgen_slice

    monkeypatch.setattr(benchmarks.run, "THROUGHPUT_SLICE_SECONDS", 0.5)
    monkeypatch.setattr(benchmarks.bench, "WARM_UP_SECONDS", 0.2)
    length = benchmarks.run.throughput_slice()
    image = CAT_JPG.read_bytes()
    ceiling = CeilingRunner(TEST_ARTIFACTS, "efficientnet_lite0", "onnxruntime", image)
    arguments = ["--artifacts", str(TEST_ARTIFACTS), "--instances", str(ceiling.instances)]
    with ServerProcess(arguments, module="benchmarks.bare_aio_server") as bare:
        contenders = {
            "tutorial": loadgen_slice(server.address, "tutorial", image, 4, length),
            "kserve-fp32": loadgen_slice(server.address, "kserve-fp32", image, 4, length),
            "bare": loadgen_slice(bare.address, "tutorial", image, 4, length),
        }
        if h2load_installed():
            contenders[h2load_key("kserve")] = h2load_slice(
                server.address, "kserve", image, 4, length
            )
        measured = benchmarks.run.throughput_beside_ceiling(ceiling, contenders, 2)
    assert list(measured.results) == list(contenders)
    for result in measured.results.values():
        assert result.errors == 0
        assert result.images == result.requests > 0
        assert 0.9 < result.seconds < 3.0  # two timed slices of 0.5 s, settling not counted
    assert measured.ceiling_images_per_s > 0


def test_without_h2load_each_api_runs_through_the_load_generator_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks.run import API_LABELS, C1_SLICE, api_slices, h2load_installed, h2load_key

    image = CAT_JPG.read_bytes()
    if h2load_installed():
        assert list(api_slices("127.0.0.1:1", image, 1, C1_SLICE)) == [
            *API_LABELS, h2load_key("tutorial"), h2load_key("kserve"),
        ]  # fmt: skip
    monkeypatch.setenv("PATH", "")
    assert not h2load_installed()
    assert list(api_slices("127.0.0.1:1", image, 1, C1_SLICE)) == list(API_LABELS)


def _result(concurrency: int, p50: float, images: int, seconds: float) -> LoadResult:
    return LoadResult(concurrency, seconds, images, latencies=[p50] * 3)


def test_the_api_table_shows_each_api_and_h2load_columns_where_measured() -> None:
    from benchmarks.run import api_table, h2load_key

    c1 = {api: _result(1, 0.0125, 80, 1.0) for api in ("tutorial", "classify", "kserve")}
    c1["kserve-fp32"] = _result(1, 0.008, 80, 1.0)
    c32 = {api: _result(32, 0.2, 360, 3.0) for api in c1}
    assert api_table(c1, c32) == [
        "| API | c1 p50 ms | c32 img/s |",
        "| --- | --- | --- |",
        "| tutorial | 12.50 | 120.0 |",
        "| Classifier | 12.50 | 120.0 |",
        "| KServe BYTES | 12.50 | 120.0 |",
        "| KServe FP32 | 8.00 | 120.0 |",
    ]
    c1[h2load_key("kserve")] = _result(1, 0.011, 80, 1.0)
    c32[h2load_key("tutorial")] = _result(32, 0.2, 400, 3.2)
    assert api_table(c1, c32) == [
        "| API | c1 p50 ms | c32 img/s | c1 p50 ms, h2load | c32 img/s, h2load |",
        "| --- | --- | --- | --- | --- |",
        "| tutorial | 12.50 | 120.0 | - | 125.0 |",
        "| Classifier | 12.50 | 120.0 | - | - |",
        "| KServe BYTES | 12.50 | 120.0 | 11.00 | - |",
        "| KServe FP32 | 8.00 | 120.0 | - | - |",
    ]


def test_ab_drives_another_revisions_server_beside_this_one(
    lite0_export: ExportResult, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import ab

    worktrees_before = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    ab.main(["--base", "HEAD", "--artifacts", str(TEST_ARTIFACTS), "--rounds", "1",
             "--seconds", "0.5", "--concurrency", "2"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    rounds = [line for line in lines if line.startswith("round 1")]
    assert len(rounds) == 2 and all(line.endswith("errors 0") for line in rounds), lines
    assert any("HEAD" in line for line in rounds) and any(
        "this checkout" in line for line in rounds
    )
    worktrees_after = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert worktrees_after == worktrees_before  # the temporary checkout is gone
