"""`--backend auto`: the fastest backend from `make compare`'s figures, else a stated order."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from grpc import insecure_channel

from export.pipeline import ExportResult
from serve.backend_choice import choose_backend
from serve.config import ServerConfig
from serve.pb.torchgrpc.v1 import classifier_pb2 as pb
from serve.pb.torchgrpc.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import ServerThread, config_with


def write_compare(folder: Path, rates: dict[str, list[float]]) -> None:
    """A compare.json in the shape `python -m benchmarks.compare` writes."""
    results = {
        "model": folder.name,
        "backends": {
            name: {"end_to_end": {"runs": [{"images_per_s": r} for r in runs]}}
            for name, runs in rates.items()
        },
    }
    (folder / "compare").mkdir(parents=True, exist_ok=True)
    (folder / "compare" / "compare.json").write_text(json.dumps(results))


ALL = ("onnxruntime", "torchscript", "eager")


def test_auto_picks_the_best_measured_throughput(tmp_path: Path) -> None:
    write_compare(tmp_path / "m", {"onnxruntime": [40, 90], "torchscript": [30, 120], "eager": [9]})
    choice = choose_backend("auto", ALL, None, tmp_path / "m")
    assert choice.backend == "torchscript"
    assert "torchscript 120" in choice.reason


def test_auto_chooses_among_the_formats_the_model_has(tmp_path: Path) -> None:
    write_compare(tmp_path / "m", {"onnxruntime": [40, 90], "torchscript": [30, 120]})
    choice = choose_backend("auto", ("onnxruntime",), None, tmp_path / "m")
    assert (choice.backend, choice.reason) == (
        "onnxruntime",
        "fastest over gRPC in `make compare` (img/s: onnxruntime 90)",
    )


def test_without_figures_auto_falls_back_to_the_stated_order(tmp_path: Path) -> None:
    choice = choose_backend("auto", ALL, None, tmp_path / "m")
    assert choice.backend == "onnxruntime"
    assert "no `make compare` figures" in choice.reason
    assert choose_backend("auto", ("eager", "torch_export"), None, tmp_path).backend == (
        "torch_export"
    )


def test_unreadable_figures_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "m" / "compare").mkdir(parents=True)
    (tmp_path / "m" / "compare" / "compare.json").write_text("{not json")
    assert choose_backend("auto", ALL, None, tmp_path / "m").backend == "onnxruntime"


def test_an_explicit_backend_is_kept(tmp_path: Path) -> None:
    write_compare(tmp_path / "m", {"torchscript": [500]})
    assert choose_backend("eager", ALL, None, tmp_path / "m").backend == "eager"


def test_config_pbtxt_wins_and_a_missing_format_falls_back(tmp_path: Path) -> None:
    assert choose_backend("eager", ALL, "onnxruntime", tmp_path).reason == "named in config.pbtxt"
    choice = choose_backend("torchscript", ("onnxruntime",), None, tmp_path)
    assert choice.backend == "onnxruntime"
    assert choice.reason.startswith("--backend torchscript has no file in this model's folder")


def test_server_with_auto_serves_and_logs_the_choice(
    lite0_export: ExportResult,
    base_config: ServerConfig,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutil.copytree(lite0_export.folder, tmp_path / "efficientnet_lite0")
    write_compare(tmp_path / "efficientnet_lite0", {"onnxruntime": [50], "torchscript": [70]})
    config = config_with(
        base_config, models=("efficientnet_lite0",), model_repository=tmp_path, backend="auto"
    )
    with (
        caplog.at_level(logging.INFO),
        ServerThread(config) as running,
        insecure_channel(running.address) as channel,
    ):
        listed = pb_grpc.ClassifierStub(channel).ListModels(pb.ListModelsRequest())
    assert [m.backend for m in listed.models] == ["torchscript"]
    assert any(
        "on torchscript (fastest over gRPC in `make compare`" in r.getMessage()
        for r in caplog.records
    )
