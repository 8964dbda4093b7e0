"""The model repository on disk, in Triton's layout: read and checked here, loaded elsewhere.

``scan(repo)`` gives one entry per model folder: a ``ModelEntry`` (settings from config.pbtxt,
versions, model files, labels) or a ``FailedModel`` with a one-line reason naming the file.
"""

from __future__ import annotations

from serve.errors import RepositoryError
from serve.repository.entries import FailedModel, ModelEntry, ModelVersion, RepositoryEntry
from serve.repository.labels import parse_labels
from serve.repository.model_config import parse_config
from serve.repository.names import name_problem, version_number
from serve.repository.scan import CONFIG_NAME, model_names, repository_root, scan, scan_model
from serve.repository.settings import PLATFORM_OF, ModelSettings
from serve.repository.versions import VersionPolicy

__all__ = [
    "CONFIG_NAME",
    "PLATFORM_OF",
    "FailedModel",
    "ModelEntry",
    "ModelSettings",
    "ModelVersion",
    "RepositoryEntry",
    "RepositoryError",
    "VersionPolicy",
    "model_names",
    "name_problem",
    "parse_config",
    "parse_labels",
    "repository_root",
    "scan",
    "scan_model",
    "version_number",
]
