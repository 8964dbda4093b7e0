"""Backends by name, and loading one from an artifacts folder with its checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from export.manifest import MANIFEST_VERSION, Manifest, modified_files, read_manifest
from serve.backends.base import Backend
from serve.backends.eager import EagerBackend
from serve.backends.onnxruntime import OnnxRuntimeBackend
from serve.backends.torchscript import TorchScriptBackend

__all__ = ["BACKENDS", "ArtifactError", "Backend", "load_backend", "load_manifest"]

BackendFactory = Callable[[Path, Manifest, int], Backend]

BACKENDS: dict[str, BackendFactory] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    TorchScriptBackend.name: TorchScriptBackend,
    EagerBackend.name: EagerBackend,
}


class ArtifactError(Exception):
    """The artifacts are missing or stale; the message names the make target that fixes it."""


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
    changed = modified_files(folder, manifest)
    if changed:
        raise ArtifactError(f"{folder}: {', '.join(changed)} missing or modified: {fix}")
    return manifest


def load_backend(kind: str, artifacts: Path, manifest: Manifest, threads: int) -> Backend:
    try:
        factory = BACKENDS[kind]
    except KeyError:
        raise ArtifactError(f"unknown backend {kind!r} (known: {', '.join(BACKENDS)})") from None
    return factory(artifacts / manifest.model, manifest, threads)
