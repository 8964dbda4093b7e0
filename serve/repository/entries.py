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
    # Backend -> the version's model file for it: one entry, or several when the folder holds the
    # model in several formats and config.pbtxt doesn't pick one.
    model_files: Mapping[str, Path]


@dataclass(frozen=True)
class ModelEntry:
    """A model whose files and config passed every check; nothing is loaded yet."""

    name: str
    # The model folder's real path.
    folder: Path
    # The backends its files can run on, in the order of ``DEFAULT_MODEL_FILENAMES``: the one
    # config.pbtxt names, else every format all served versions hold (the server picks one).
    backends: tuple[str, ...]
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
