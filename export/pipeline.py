"""The export stage, end to end: weights -> eager -> TorchScript + ONNX -> parity -> artifacts/."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from PIL import Image

from export.catalog import SAMPLE_IMAGES
from export.convert import export_onnx, torchscript_is_wanted, trace_torchscript
from export.fingerprint import ONNX_OPSET, export_fingerprint, library_versions
from export.manifest import (
    MANIFEST_NAME,
    ONNX_NAME,
    TORCHSCRIPT_NAME,
    WEIGHTS_NAME,
    Manifest,
    Parity,
    file_sha256,
    modified_files,
    read_manifest,
)
from export.parity import measure_parity
from export.zoo import ModelSpec, get_spec
from export.zoo.spec import state_dict_sha256

__all__ = ["ExportResult", "ParityError", "export_model", "sample_batch"]

log = logging.getLogger(__name__)

# Exported forms may differ from eager by float rounding only; more than this is a broken export.
MAX_LOGIT_DIFF = 1e-2


class ParityError(Exception):
    """An exported form disagrees with eager beyond rounding."""


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    manifest: Manifest
    skipped: bool


def export_model(
    model: str, weights: str | None, artifacts: Path, *, force: bool = False
) -> ExportResult:
    """Exports ``model`` into ``artifacts/<model>/``; does nothing when it is already up to date."""
    spec = get_spec(model)
    loaded = spec.load_weights(weights)
    weights_sha = state_dict_sha256(loaded.state_dict)
    fingerprint = export_fingerprint(spec.name, weights_sha)
    folder = artifacts / spec.name
    current = _current_manifest(folder)
    if not force and current is not None and current.fingerprint == fingerprint:
        log.info("%s is up to date (%s)", folder, loaded.source)
        return ExportResult(folder, current, skipped=True)

    with tempfile.TemporaryDirectory(dir=artifacts, prefix=f".{spec.name}-") as tmp:
        staging = Path(tmp) / spec.name
        staging.mkdir()
        manifest = _write_artifacts(spec, loaded.state_dict, loaded.source, weights_sha, staging)
        manifest_text = manifest.to_json()
        _replace_folder(staging, folder)
        # The manifest goes last: a folder without one is never mistaken for a finished export.
        (folder / MANIFEST_NAME).write_text(manifest_text)
    return ExportResult(folder, manifest, skipped=False)


def _write_artifacts(
    spec: ModelSpec, state: dict[str, torch.Tensor], source: str, weights_sha: str, out: Path
) -> Manifest:
    model = spec.build_with(state)
    images = sample_batch(spec)
    example = torch.from_numpy(images)
    with torch.no_grad():
        eager_logits = model(example).numpy()

    log.info("tracing %s to TorchScript", spec.name)
    scripted, optimized = trace_torchscript(model, example)
    scripted.save(str(out / TORCHSCRIPT_NAME))
    log.info("exporting %s to ONNX (opset %d)", spec.name, ONNX_OPSET)
    export_onnx(model, example, out / ONNX_NAME)
    onnx.checker.check_model(str(out / ONNX_NAME))
    torch.save(state, out / WEIGHTS_NAME)

    parity = {
        "torchscript": measure_parity(eager_logits, _torchscript_logits(out, images)),
        "onnxruntime": measure_parity(eager_logits, _onnx_logits(out, images)),
    }
    _check_parity(spec.name, parity)
    return Manifest(
        model=spec.name,
        weights_source=source,
        weights_sha256=weights_sha,
        input_shape=spec.input_shape,
        preprocessing=spec.preprocessing,
        labels=spec.labels,
        opset=ONNX_OPSET,
        parity=parity,
        versions=library_versions(),
        fingerprint=export_fingerprint(spec.name, weights_sha),
        files={
            name: file_sha256(out / name) for name in (TORCHSCRIPT_NAME, ONNX_NAME, WEIGHTS_NAME)
        },
        torchscript_optimized=optimized,
    )


def sample_batch(spec: ModelSpec) -> np.ndarray:
    """The sample photos, decoded with plain Pillow and pre-processed as the server does it."""
    arrays = []
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg")):
        with Image.open(path) as image:
            arrays.append(spec.preprocessing.apply(image.convert("RGB")))
    return np.stack(arrays)


def _torchscript_logits(folder: Path, images: np.ndarray) -> np.ndarray:
    with torchscript_is_wanted():
        path = str(folder / TORCHSCRIPT_NAME)
        module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.no_grad():
        result: np.ndarray = module(torch.from_numpy(images)).numpy()
    return result


def _onnx_logits(folder: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(
        str(folder / ONNX_NAME), providers=["CPUExecutionProvider"]
    )
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: images})[0]
    return result


def _check_parity(model: str, parity: dict[str, Parity]) -> None:
    for backend, result in parity.items():
        log.info(
            "%s %s vs eager: max |logit diff| %.2e, top-1 %s on %d images",
            model,
            backend,
            result.max_abs_diff,
            "equal" if result.top1_equal else "DIFFERENT",
            result.images,
        )
        if not result.top1_equal or result.max_abs_diff > MAX_LOGIT_DIFF:
            raise ParityError(f"{model}: {backend} disagrees with eager ({result})")


def _current_manifest(folder: Path) -> Manifest | None:
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError, KeyError):
        return None
    return manifest if manifest.files and not modified_files(folder, manifest) else None


def _replace_folder(new: Path, final: Path) -> None:
    """Swaps ``new`` in for ``final`` with renames, so readers never see a half-written folder."""
    if final.exists():
        old = new.parent / "previous"
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old)
    else:
        new.rename(final)
