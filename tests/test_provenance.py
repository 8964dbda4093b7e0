"""The export record (manifest.json) of a model folder, checked before its files are loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.pipeline import ExportResult
from serve.errors import ArtifactError
from serve.provenance import check_export


def test_a_model_without_manifest_is_not_checked(tmp_path: Path) -> None:
    """A user's model has no export record: nothing to check."""
    assert check_export(tmp_path, "mine") is None


def test_an_exported_model_as_exported_passes(lite0_export: ExportResult) -> None:
    source = check_export(lite0_export.folder, "efficientnet_lite0")
    assert source == lite0_export.manifest.weights_source


def test_modified_artifact_is_stale(lite0_export: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    with (copy / "1" / "model.onnx").open("ab") as onnx_file:
        onnx_file.write(b"\0")
    with pytest.raises(ArtifactError, match=r"model.onnx missing or modified.*make export"):
        check_export(copy, "efficientnet_lite0")


def test_unreadable_manifest_is_stale(lite0_export: ExportResult, tmp_path: Path) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    (copy / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="unreadable"):
        check_export(copy, "efficientnet_lite0")


def test_artifacts_from_other_code_or_libraries_are_stale(
    lite0_export: ExportResult, tmp_path: Path
) -> None:
    copy = tmp_path / "efficientnet_lite0"
    shutil.copytree(lite0_export.folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["fingerprint"] = "0" * 64  # as if exported by another version of the model code
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"is stale: .*make export MODEL=efficientnet_lite0"):
        check_export(copy, "efficientnet_lite0")
