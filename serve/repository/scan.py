"""Scanning a Triton-style repository: one entry per model folder, read and checked, not loaded.

```
<repo>/<model>/config.pbtxt           optional; without it, everything comes from the model file
<repo>/<model>/<label_filename>       one label a line, named by an output
<repo>/<model>/<version>/model.onnx   or model.pt, model.pt2, or default_model_filename
```

A model that fails a check becomes a FailedModel with the reason; the others are unaffected.
Nothing here follows a symlink out of the repository or reads anything but a regular file.
The scan reads files: call it off the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from serve.errors import RepositoryError, shortened
from serve.repository.entries import FailedModel, ModelEntry, RepositoryEntry
from serve.repository.labels import check_label_count, read_labels
from serve.repository.model_config import parse_config
from serve.repository.model_files import find_model_files
from serve.repository.names import name_problem, version_number
from serve.repository.paths import inside, read_limited, regular_file
from serve.repository.settings import ModelSettings

__all__ = [
    "CONFIG_NAME",
    "MAX_CONFIG_BYTES",
    "model_names",
    "repository_root",
    "scan",
    "scan_model",
]

CONFIG_NAME = "config.pbtxt"
MAX_CONFIG_BYTES = 1024 * 1024


def repository_root(repo: Path) -> Path:
    """The repository's real path; RepositoryError when it is not a folder."""
    try:
        root = repo.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RepositoryError(str(repo), "the model repository does not exist") from None
    if not root.is_dir():
        raise RepositoryError(str(repo), "the model repository is not a folder")
    return root


def scan(repo: Path) -> list[RepositoryEntry]:
    """Every model folder of ``repo``, by name: a ModelEntry, or a FailedModel with the reason."""
    root = repository_root(repo)
    return [_scan(root, repo, name) for name in model_names(repo)]


def model_names(repo: Path) -> list[str]:
    """The names of ``repo``'s model folders, sorted, without reading them.

    Files and symlinks to files inside the repository are not models, nor are hidden folders
    (``.git``, the exporter's staging folders): they are skipped. Any other folder or symlink is
    a model folder.
    """
    root = repository_root(repo)
    try:
        names = sorted(os.listdir(root))
    except OSError as error:
        raise RepositoryError(str(repo), f"can't be listed ({error.strerror})") from None
    return [n for n in names if not n.startswith(".") and _may_be_model(root / n, root)]


def scan_model(repo: Path, name: str) -> RepositoryEntry:
    """The model ``name`` of ``repo`` alone (to load one model by name): a FailedModel when
    there is no such folder, or the name is refused."""
    return _scan(repository_root(repo), repo, name)


def _may_be_model(path: Path, root: Path) -> bool:
    if not path.is_symlink():
        return path.is_dir()
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return True  # broken or looping: reported
    return real.is_dir() or not real.is_relative_to(root)


def _scan(root: Path, repo: Path, name: str) -> RepositoryEntry:
    problem = name_problem(name)
    shown = f"{repo}/{shortened(name) if problem else name}"
    try:
        if problem:
            raise RepositoryError(shown, f"model name {problem}")
        folder = inside(root / name, root, shown)
        if not folder.is_dir():
            raise RepositoryError(shown, "is not a folder")
        return _model(root, folder, name, shown)
    except RepositoryError as error:
        return FailedModel(name, root / name, error)
    except OSError as error:
        reason = f"can't be read ({error.strerror or error})"
        return FailedModel(name, root / name, RepositoryError(shown, reason))


def _model(root: Path, folder: Path, name: str, shown: str) -> ModelEntry:
    shown_config = f"{shown}/{CONFIG_NAME}"
    config_file = None
    text = ""
    if os.path.lexists(folder / CONFIG_NAME):
        config_file = regular_file(folder / CONFIG_NAME, root, shown_config)
        text = read_limited(config_file, shown_config, MAX_CONFIG_BYTES)
    settings = parse_config(text, shown_config, name)
    versions, ignored = _versions(root, folder, shown)
    if not versions:
        raise RepositoryError(shown, "has no version folder (1, 2, ...)")
    missing = settings.version_policy.missing(versions)
    if missing:
        raise RepositoryError(
            shown_config,
            f"{_numbers(missing)} not found (versions on disk: {_numbers(versions)})",
            "version_policy.specific.versions",
        )
    selected = {number: versions[number] for number in settings.version_policy.select(versions)}
    backends, files = find_model_files(settings, selected, root, shown)
    return ModelEntry(
        name=name,
        folder=folder,
        backends=backends,
        settings=settings,
        config_file=config_file,
        versions=versions,
        selected=files,
        labels=_labels(root, folder, settings, shown, shown_config),
        ignored=ignored,
    )


def _versions(root: Path, folder: Path, shown: str) -> tuple[dict[int, Path], tuple[str, ...]]:
    """Version folders (number -> real path, ascending), and the sub-folders that aren't."""
    versions: dict[int, Path] = {}
    ignored: list[str] = []
    for entry in sorted(os.listdir(folder)):
        path = folder / entry
        if not (path.is_dir() or path.is_symlink()):
            continue
        number = version_number(entry)
        if number is None:
            if path.is_dir():
                ignored.append(entry)
            continue
        real = inside(path, root, f"{shown}/{entry}")
        if real.is_dir():
            versions[number] = real
    return dict(sorted(versions.items())), tuple(ignored)


def _labels(
    root: Path, folder: Path, settings: ModelSettings, shown: str, shown_config: str
) -> dict[str, tuple[str, ...]]:
    outputs = {spec.name: spec for spec in settings.outputs}
    labels: dict[str, tuple[str, ...]] = {}
    for output, filename in settings.label_files.items():
        shown_file = f"{shown}/{filename}"
        values = read_labels(regular_file(folder / filename, root, shown_file), shown_file)
        check_label_count(values, outputs[output], shown_file, shown_config)
        labels[output] = values
    return labels


def _numbers(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in numbers)
