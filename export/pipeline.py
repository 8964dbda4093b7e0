"""The export stage, end to end: weights -> eager -> TorchScript + ONNX -> parity -> artifacts/.

A model is written in Triton's repository layout, as one entry of the model repository:

```
artifacts/<model>/config.pbtxt    inputs, outputs, batching, pre-processing (parameters)
artifacts/<model>/labels.txt      the class names, the logits output's label_filename
artifacts/<model>/manifest.json   provenance: weights, parity, fingerprint, file hashes
artifacts/<model>/1/model.onnx    the same model for each backend: ONNX Runtime,
artifacts/<model>/1/model.pt      TorchScript,
artifacts/<model>/1/weights.pt    and eager (a state dict for export.zoo.factories)
```
"""

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
from export.convert import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    torchscript_is_wanted,
    trace_torchscript,
)
from export.fingerprint import ONNX_OPSET, export_fingerprint, library_versions
from export.manifest import (
    CONFIG_NAME,
    EXPORTED_VERSION,
    IMAGE_INPUT_PARAMETER,
    LABELS_NAME,
    MANIFEST_NAME,
    MANIFEST_VERSION,
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
from export.triton_config import (
    DEFAULT_MAX_BATCH_SIZE,
    FACTORY_PARAMETER,
    SOFTMAX_PARAMETER,
    TORCHSCRIPT_OPTIMIZE_PARAMETER,
    TensorConfig,
    TritonConfig,
    config_text,
)
from export.zoo import ModelSpec, get_spec
from export.zoo.spec import state_dict_sha256

__all__ = ["ExportResult", "ParityError", "export_model", "sample_batch"]

log = logging.getLogger(__name__)

# Exported forms may differ from eager by float rounding only; more than this is a broken export.
MAX_LOGIT_DIFF = 1e-2
# The model files of the version folder, relative to the model folder.
MODEL_FILES = tuple(
    f"{EXPORTED_VERSION}/{name}" for name in (ONNX_NAME, TORCHSCRIPT_NAME, WEIGHTS_NAME)
)
# The zoo's factories, which the eager backend builds the module with before loading weights.pt.
FACTORIES = "export.zoo.factories"


class ParityError(Exception):
    """An exported form disagrees with eager beyond rounding."""


@dataclass(frozen=True)
class ExportResult:
    # The model folder: artifacts/<model>.
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
        (staging / EXPORTED_VERSION).mkdir(parents=True)
        manifest = _write_artifacts(spec, loaded.state_dict, loaded.source, weights_sha, staging)
        (staging / CONFIG_NAME).write_text(config_text(_triton_config(spec, manifest)))
        (staging / LABELS_NAME).write_text("".join(f"{label}\n" for label in spec.labels))
        _replace_folder(staging, folder)
        # The manifest goes last: a folder without one is never mistaken for a finished export.
        written = Path(tmp) / MANIFEST_NAME
        written.write_text(manifest.to_json())
        written.replace(folder / MANIFEST_NAME)
    return ExportResult(folder, manifest, skipped=False)


def _write_artifacts(
    spec: ModelSpec, state: dict[str, torch.Tensor], source: str, weights_sha: str, out: Path
) -> Manifest:
    model = spec.build_with(state)
    images = sample_batch(spec)
    example = torch.from_numpy(images)
    with torch.no_grad():
        eager_logits = model(example).numpy()

    version = out / EXPORTED_VERSION
    log.info("tracing %s to TorchScript", spec.name)
    scripted, optimized = trace_torchscript(model, example)
    scripted.save(str(version / TORCHSCRIPT_NAME))
    log.info("exporting %s to ONNX (opset %d)", spec.name, ONNX_OPSET)
    export_onnx(model, example, version / ONNX_NAME)
    onnx.checker.check_model(str(version / ONNX_NAME))
    torch.save(state, version / WEIGHTS_NAME)

    parity = {
        "torchscript": measure_parity(
            eager_logits, _torchscript_logits(version / TORCHSCRIPT_NAME, images)
        ),
        "onnxruntime": measure_parity(eager_logits, _onnx_logits(version / ONNX_NAME, images)),
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
        files={path: file_sha256(out / path) for path in MODEL_FILES},
        torchscript_optimized=optimized,
    )


def _triton_config(spec: ModelSpec, manifest: Manifest) -> TritonConfig:
    """A batching image classifier: every backend's file serves it, the server picks one."""
    parameters = {
        IMAGE_INPUT_PARAMETER: INPUT_NAME,
        **spec.preprocessing.to_parameters(),
        SOFTMAX_PARAMETER: OUTPUT_NAME,
        FACTORY_PARAMETER: f"{FACTORIES}:{spec.name}",
    }
    if manifest.torchscript_optimized:
        parameters[TORCHSCRIPT_OPTIMIZE_PARAMETER] = "true"
    return TritonConfig(
        name=spec.name,
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        inputs=(TensorConfig(INPUT_NAME, "FP32", spec.preprocessing.output_shape),),
        outputs=(TensorConfig(OUTPUT_NAME, "FP32", (len(spec.labels),), LABELS_NAME),),
        dynamic_batching=True,
        parameters=parameters,
    )


def sample_batch(spec: ModelSpec) -> np.ndarray:
    """The sample photos, decoded with plain Pillow and pre-processed as the server does it."""
    arrays = []
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg")):
        with Image.open(path) as image:
            arrays.append(spec.preprocessing.apply(image.convert("RGB")))
    return np.stack(arrays)


def _torchscript_logits(path: Path, images: np.ndarray) -> np.ndarray:
    with torchscript_is_wanted():
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.no_grad():
        result: np.ndarray = module(torch.from_numpy(images)).numpy()
    return result


def _onnx_logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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
    """The manifest of a complete export in this layout whose files are as it wrote them. The
    config and labels may have been edited (a user tuning instances, say): they must exist."""
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError, KeyError):
        return None
    complete = (
        manifest.manifest_version == MANIFEST_VERSION
        and set(manifest.files) == set(MODEL_FILES)
        and (folder / CONFIG_NAME).is_file()
        and (folder / LABELS_NAME).is_file()
        and not modified_files(folder, manifest)
    )
    return manifest if complete else None


def _replace_folder(new: Path, final: Path) -> None:
    """Swaps ``new`` in for ``final`` with renames, so readers never see a half-written folder."""
    if final.exists():
        old = new.parent / "previous"
        final.rename(old)
        new.rename(final)
        shutil.rmtree(old)
    else:
        new.rename(final)
