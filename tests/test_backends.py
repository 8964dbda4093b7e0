"""The three backends agree, and the server refuses missing or stale artifacts clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from export.manifest import ONNX_NAME
from export.pipeline import ExportResult, sample_batch
from export.zoo import get_spec
from serve.backends import BACKENDS, ArtifactError, load_backend, load_manifest, run_single
from serve.imaging import ImageLimits, load_image
from tests.conftest import IMAGES, TEST_ARTIFACTS, modules_loaded_by


def images_batch(model: str) -> np.ndarray:
    pre = get_spec(model).preprocessing
    images = sorted(IMAGES.glob("*.*g"))
    return np.stack(
        [load_image(p.read_bytes(), i, ImageLimits(), pre) for i, p in enumerate(images)]
    )


@pytest.mark.parametrize("export", ["lite0_export", "resnet34_export"])
def test_three_backends_same_top1_on_the_example_images(
    export: str, request: pytest.FixtureRequest
) -> None:
    exported: ExportResult = request.getfixturevalue(export)
    model = exported.manifest.model
    batch = np.concatenate([images_batch(model), sample_batch(get_spec(model))])
    logits = {
        kind: run_single(load_backend(kind, TEST_ARTIFACTS, exported.manifest, 2), batch)
        for kind in BACKENDS
    }
    top1 = {kind: out.argmax(axis=1).tolist() for kind, out in logits.items()}
    assert top1["torchscript"] == top1["eager"] == top1["onnxruntime"]
    assert np.abs(logits["onnxruntime"] - logits["eager"]).max() < 1e-3
    if model == "efficientnet_lite0":
        assert top1["eager"][:3] == [285, 285, 967]  # cat.jpg, cat.png, coffee.jpg


def test_missing_artifacts_name_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"make export MODEL=resnet34"):
        load_manifest(tmp_path, "resnet34")


def test_modified_artifact_is_stale(lite0_export: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    with (copy / ONNX_NAME).open("ab") as onnx_file:
        onnx_file.write(b"\0")
    with pytest.raises(ArtifactError, match=r"model.onnx missing or modified.*make export"):
        load_manifest(tmp_path, "efficientnet_lite0")


def test_unreadable_manifest_is_stale(lite0_export: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    (copy / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_manifest(tmp_path, "efficientnet_lite0")


def test_artifacts_from_other_code_or_libraries_are_stale(
    lite0_export: ExportResult, tmp_path: Path
) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64  # as if exported by another version of the model code
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"is stale: .*make export MODEL=efficientnet_lite0"):
        load_manifest(tmp_path, "efficientnet_lite0")


def test_serving_onnxruntime_never_imports_pytorch(lite0_export: ExportResult) -> None:
    """The server loads only its backend's dependencies: no PyTorch (a GB of memory) for ONNX."""
    code = (
        "from pathlib import Path\n"
        "import serve.server\n"
        "from serve.backends import load_backend, load_manifest\n"
        f"artifacts = Path({str(TEST_ARTIFACTS)!r})\n"
        "manifest = load_manifest(artifacts, 'efficientnet_lite0')\n"
        "load_backend('onnxruntime', artifacts, manifest, 1)\n"
    )
    assert modules_loaded_by(code, ["torch", "torchvision", "onnx"]) == []
