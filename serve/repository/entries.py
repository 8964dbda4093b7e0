"""What a scan finds for each model folder: a usable entry, or the reason it can't be used."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serve.errors import RepositoryError
from serve.repository.settings import ModelSettings

__all__ = ["FailedModel", "ModelEntry", "ModelVersion", "RepositoryEntry"]


@dataclass(frozen=True)
class ModelVersion:
    number: int
    # Real paths (symlinks resolved, checked to be inside the repository).
    folder: Path
    model_file: Path


@dataclass(frozen=True)
class ModelEntry:
    """A model whose files and config passed every check; nothing is loaded yet."""

    name: str
    # The model folder's real path.
    folder: Path
    # The backend that runs it: from config.pbtxt, else from the model file's name.
    backend: str
    # ``settings.backend == backend``.
    settings: ModelSettings
    # config.pbtxt's real path; None when the folder has none (settings are then all defaults).
    config_file: Path | None
    # Every version folder on disk: number -> real path.
    versions: Mapping[int, Path]
    # The versions the version policy serves, newest first, each with its model file.
    selected: tuple[ModelVersion, ...]
    # Output name -> its labels, for the outputs with a label_filename.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Sub-folders that are not versions ("01", "v2", "abc": Triton ignores them), for a log line.
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class FailedModel:
    """A model folder that can't be served, with the one-line reason (it names the file)."""

    # The folder's name as found on disk: it may be one the repository refuses (``error`` says
    # why), so echo it with ``serve.errors.shortened``, never raw.
    name: str
    folder: Path
    error: RepositoryError

    @property
    def reason(self) -> str:
        return self.error.message


RepositoryEntry = ModelEntry | FailedModel
