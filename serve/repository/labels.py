"""Label files: one label a line (UTF-8), named by an output's ``label_filename``."""

from __future__ import annotations

from pathlib import Path

from serve.errors import RepositoryError
from serve.repository.paths import read_limited
from serve.tensors import VARIABLE, TensorSpec

__all__ = ["MAX_LABELS_BYTES", "check_label_count", "parse_labels", "read_labels"]

# A label file larger than this is refused (a vocabulary of 250,000 tokens is about 3 MB).
MAX_LABELS_BYTES = 16 * 1024 * 1024


def parse_labels(text: str) -> tuple[str, ...]:
    """One label a line, split on "\\n" only ("\\r\\n" works too); a final empty line is not a
    label, every other line is (even an empty one: a class may have no name)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)


def read_labels(real: Path, shown: str) -> tuple[str, ...]:
    """The labels of the file at ``real`` (a checked regular file), refused when there are none."""
    labels = parse_labels(read_limited(real, shown, MAX_LABELS_BYTES))
    if not labels:
        raise RepositoryError(shown, "has no labels")
    return labels


def check_label_count(labels: tuple[str, ...], output: TensorSpec, shown: str, config: str) -> None:
    """The labels must match ``output``'s last dimension when it is fixed."""
    last = output.shape[-1] if output.shape else VARIABLE
    if last != VARIABLE and len(labels) != last:
        raise RepositoryError(
            shown,
            f"{len(labels)} labels, but output {output.name!r} has {last} "
            f"(its last dimension in {config})",
        )
