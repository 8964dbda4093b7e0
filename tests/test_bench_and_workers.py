"""The load generator's modes, the tutorial-design baseline, and --workers on one port."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from benchmarks.process import ServerProcess
from export.pipeline import ExportResult
from serve.pb import inference_pb2, inference_pb2_grpc
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


def test_bench_drives_both_apis_and_prints_json(server: ServerThread) -> None:
    for api in ("tutorial", "classify"):
        done = bench("--server", server.address, "--api", api, "--requests", "12",
                     "--concurrency", "3", "--images-per-request", "2", "--json")  # fmt: skip
        summary = json.loads(done.stdout)
        assert (summary["api"], summary["requests"], summary["errors"]) == (api, 12, 0)
        assert summary["images"] == 24
        assert summary["images_per_s"] == pytest.approx(2 * summary["requests_per_s"], rel=1e-3)
        assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]


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
    from benchmarks.run import C1_SLICE_REQUESTS, c1_beside_in_process

    image = CAT_JPG.read_bytes()
    lone = LoneImage("onnxruntime", TEST_ARTIFACTS, lite0_export.manifest, image)
    arguments = ["--artifacts", str(TEST_ARTIFACTS)]
    with ServerProcess(arguments, module="benchmarks.bare_aio_server") as bare:
        measured = c1_beside_in_process(server.address, bare.address, lone, image, slices=2)
    for result in (measured.blocking, measured.asyncio, measured.bare):
        assert (result.requests, result.images, result.errors) == (2 * C1_SLICE_REQUESTS,) * 2 + (
            0,
        )
        assert result.seconds > 0 and result.percentile_ms(50) > 0
    assert len(measured.in_process) == 2 * C1_SLICE_REQUESTS
    assert all(seconds > 0 for seconds in measured.in_process)


def test_benchmark_measures_throughput_in_slices_beside_the_ceiling(
    server: ServerThread, lite0_export: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.bench
    import benchmarks.run
    from benchmarks.ceiling import CeilingRunner

    monkeypatch.setattr(benchmarks.run, "THROUGHPUT_SLICE_SECONDS", 0.5)
    monkeypatch.setattr(benchmarks.bench, "WARM_UP_SECONDS", 0.2)
    image = CAT_JPG.read_bytes()
    ceiling = CeilingRunner("onnxruntime", TEST_ARTIFACTS, lite0_export.manifest, image)
    arguments = ["--artifacts", str(TEST_ARTIFACTS), "--instances", str(ceiling.instances)]
    with ServerProcess(arguments, module="benchmarks.bare_aio_server") as bare:
        measured = benchmarks.run.throughput_beside_ceiling(
            server.address, ceiling, image, 4, 2, bare_address=bare.address
        )
    for result in (measured.server, measured.bare):
        assert result.errors == 0
        assert result.images == result.requests > 0
        assert 0.9 < result.seconds < 3.0  # two timed slices of 0.5 s, settling not counted
    assert measured.ceiling_images_per_s > 0


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
