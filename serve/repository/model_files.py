"""The model files of each served version, and the formats (backends) they offer.

A version folder may hold the same model in several formats (the export stage writes model.onnx,
model.pt and weights.pt side by side): then the server's ``--backend`` (or ``auto``) picks one at
load time. When config.pbtxt names the platform or backend, only that format's file is needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from serve.errors import RepositoryError
from serve.repository.entries import ModelVersion
from serve.repository.paths import regular_file
from serve.repository.settings import (
    DEFAULT_MODEL_FILENAMES,
    FACTORY_PARAMETER,
    SUFFIX_BACKENDS,
    ModelSettings,
)

__all__ = ["find_model_files"]

# The files that name their backend, in the order a message lists them.
_BY_FILE = {
    DEFAULT_MODEL_FILENAMES[backend]: backend for backend in dict.fromkeys(SUFFIX_BACKENDS.values())
}


def find_model_files(
    settings: ModelSettings, folders: Mapping[int, Path], root: Path, shown: str
) -> tuple[tuple[str, ...], tuple[ModelVersion, ...]]:
    """The formats every version offers, and each version of ``folders`` (number -> real folder,
    newest first) with its model file per format. ``shown`` is the model folder as messages name
    it."""
    filename = settings.model_filename
    if filename and settings.backend:
        names = {settings.backend: filename}
    else:
        names = _present_in_all(settings, folders, shown)
    versions = tuple(
        ModelVersion(
            number,
            folder,
            {
                backend: regular_file(folder / name, root, f"{shown}/{number}/{name}")
                for backend, name in names.items()
            },
        )
        for number, folder in folders.items()
    )
    return tuple(names), versions


def _candidates(settings: ModelSettings) -> dict[str, str]:
    """File name -> backend, for a model whose config.pbtxt doesn't name its backend: the weights
    file counts only for a model with a factory to build it."""
    candidates = dict(_BY_FILE)
    if FACTORY_PARAMETER in settings.parameters:
        candidates[DEFAULT_MODEL_FILENAMES["eager"]] = "eager"
    return candidates


def _present_in_all(
    settings: ModelSettings, folders: Mapping[int, Path], shown: str
) -> dict[str, str]:
    """Backend -> file name, for the formats every version holds (at least one)."""
    candidates = _candidates(settings)
    listed = ", ".join(candidates)
    common: dict[str, str] | None = None
    found: dict[str, int] = {}
    for number, folder in folders.items():
        present = {
            backend: name for name, backend in candidates.items() if os.path.lexists(folder / name)
        }
        if not present:
            raise RepositoryError(f"{shown}/{number}", f"has no model file ({listed})")
        for name in present.values():
            found.setdefault(name, number)
        common = present if common is None else {b: n for b, n in common.items() if b in present}
    if not common:
        which = ", ".join(f"{name} in {number}" for name, number in found.items())
        raise RepositoryError(
            shown, f"versions hold different model files ({which}): set platform or backend"
        )
    return common
