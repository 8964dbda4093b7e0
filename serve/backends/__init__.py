"""Backends by name, and loading one from an artifacts folder with its checks."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.fingerprint import export_fingerprint, exporter_installed
from export.manifest import MANIFEST_VERSION, Manifest, modified_files, read_manifest
from serve.backends.base import Backend
from serve.errors import ArtifactError

__all__ = [
    "BACKENDS",
    "ArtifactError",
    "Backend",
    "load_backend",
    "load_manifest",
    "run_single",
]

BackendFactory = Callable[[Path, Manifest, int], Backend]

# Imported only when used: a server on ONNX Runtime never loads PyTorch (about 1 GB less memory
# and seconds less start-up).
_IMPLEMENTATIONS = {
    "onnxruntime": ("serve.backends.onnxruntime", "OnnxRuntimeBackend"),
    "torchscript": ("serve.backends.torchscript", "TorchScriptBackend"),
    "eager": ("serve.backends.eager", "EagerBackend"),
}
BACKENDS: tuple[str, ...] = tuple(_IMPLEMENTATIONS)


def load_manifest(artifacts: Path, model: str) -> Manifest:
    """Reads and checks ``artifacts/<model>/``: complete, current layout, files as exported."""
    folder = artifacts / model
    fix = f"run `make export MODEL={model}` (or `python -m export --model {model}`)"
    try:
        manifest = read_manifest(folder)
    except FileNotFoundError:
        raise ArtifactError(f"no exported model in {folder}: {fix}") from None
    except (ValueError, KeyError) as exc:
        raise ArtifactError(f"{folder}/manifest.json is unreadable ({exc}): {fix}") from None
    if manifest.manifest_version != MANIFEST_VERSION or manifest.model != model:
        raise ArtifactError(f"{folder} was written by another version of the exporter: {fix}")
    # Where the exporter's libraries aren't installed (a serving-only install), what the export
    # would write today can't be known: the files' hashes below are what can be checked.
    stale = manifest.fingerprint != export_fingerprint(model, manifest.weights_sha256)
    if stale and exporter_installed():
        raise ArtifactError(
            f"{folder} is stale: exported with other model code or library versions: {fix}"
        )
    changed = modified_files(folder, manifest)
    if changed:
        raise ArtifactError(f"{folder}: {', '.join(changed)} missing or modified: {fix}")
    return manifest


def load_backend(kind: str, artifacts: Path, manifest: Manifest, threads: int) -> Backend:
    try:
        module, name = _IMPLEMENTATIONS[kind]
    except KeyError:
        raise ArtifactError(f"unknown backend {kind!r} (known: {', '.join(BACKENDS)})") from None
    try:
        implementation = importlib.import_module(module)
    except ImportError as error:
        raise ArtifactError(
            f"the {kind} backend needs {error.name or 'a missing package'}: "
            "pip install 'torchgrpc[torch]', or serve with --backend onnxruntime"
        ) from None
    factory: BackendFactory = getattr(implementation, name)
    return factory(artifacts / manifest.model, manifest, threads)


def run_single(backend: Backend, batch: np.ndarray) -> np.ndarray:
    """A single-input, single-output model (the bundled classifiers) on one array: for tools
    that time the model alone."""
    (tensor,) = backend.inputs
    (output,) = backend.outputs
    return backend.run({tensor.name: batch})[output.name]
