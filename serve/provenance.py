"""The export stage's record of a model folder (``manifest.json``), checked before loading.

Models the export stage wrote carry a manifest: their files' hashes, and a fingerprint of the code
and libraries that made them. A modified file or a stale export is refused with the command that
fixes it. A user's model has no manifest, and nothing is checked here.
"""

from __future__ import annotations

import os
from pathlib import Path

from export.fingerprint import export_fingerprint, exporter_installed
from export.manifest import MANIFEST_NAME, MANIFEST_VERSION, modified_files, read_manifest
from serve.errors import ArtifactError

__all__ = ["check_export"]


def check_export(folder: Path, name: str) -> str | None:
    """The weights' source of the exported model in ``folder`` (which the repository calls
    ``name``), once its files are as exported and current; None without a manifest."""
    if not os.path.lexists(folder / MANIFEST_NAME):
        return None
    fix = f"run `make export MODEL={name}` (or `python -m export --model {name}`)"
    try:
        manifest = read_manifest(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{folder}/{MANIFEST_NAME} is unreadable ({exc}): {fix}") from None
    if manifest.manifest_version != MANIFEST_VERSION:
        raise ArtifactError(f"{folder} was written by another version of the exporter: {fix}")
    # Where the exporter's libraries aren't installed (a serving-only install), what the export
    # would write today can't be known: the files' hashes below are what can be checked.
    stale = manifest.fingerprint != export_fingerprint(manifest.model, manifest.weights_sha256)
    if stale and exporter_installed():
        raise ArtifactError(
            f"{folder} is stale: exported with other model code or library versions: {fix}"
        )
    changed = modified_files(folder, manifest)
    if changed:
        raise ArtifactError(f"{folder}: {', '.join(changed)} missing or modified: {fix}")
    return manifest.weights_source
