"""The model file of each served version, and the backend it decides when config.pbtxt doesn't."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from serve.errors import RepositoryError
from serve.repository.entries import ModelVersion
from serve.repository.paths import regular_file
from serve.repository.settings import DEFAULT_MODEL_FILENAMES, SUFFIX_BACKENDS, ModelSettings

__all__ = ["find_model_files"]

# The files that name their backend, in the order a message lists them.
_BY_FILE = {
    DEFAULT_MODEL_FILENAMES[backend]: backend for backend in dict.fromkeys(SUFFIX_BACKENDS.values())
}


def find_model_files(
    settings: ModelSettings, folders: Mapping[int, Path], root: Path, shown: str
) -> tuple[str, tuple[ModelVersion, ...]]:
    """The backend, and each version of ``folders`` (number -> real folder, newest first) with its
    model file. ``shown`` is the model folder as messages name it."""
    filename = settings.model_filename
    if filename and settings.backend:
        backend = settings.backend
    else:
        backend, filename = _from_files(folders, shown)
    versions = tuple(
        ModelVersion(
            number, folder, regular_file(folder / filename, root, f"{shown}/{number}/{filename}")
        )
        for number, folder in folders.items()
    )
    return backend, versions


def _from_files(folders: Mapping[int, Path], shown: str) -> tuple[str, str]:
    """The one model file name the versions share, among those that name their backend."""
    listed = ", ".join(_BY_FILE)
    found: dict[str, int] = {}
    for number, folder in folders.items():
        present = [name for name in _BY_FILE if os.path.lexists(folder / name)]
        if not present:
            raise RepositoryError(f"{shown}/{number}", f"has no model file ({listed})")
        if len(present) > 1:
            raise RepositoryError(
                f"{shown}/{number}",
                f"has {' and '.join(present)}: set platform or backend in config.pbtxt",
            )
        found.setdefault(present[0], number)
    if len(found) > 1:
        which = ", ".join(f"{name} in {number}" for name, number in found.items())
        raise RepositoryError(
            shown, f"versions hold different model files ({which}): set platform or backend"
        )
    (filename,) = found
    return _BY_FILE[filename], filename
