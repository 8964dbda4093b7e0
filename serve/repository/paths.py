"""Paths that stay inside the repository: every folder and file is resolved (symlinks followed)
and refused when it lands outside the repository's own real path, or on the repository itself.

A symlink that stays inside is fine (a model or a version shared under two names). The paths
returned are real paths, so later reads don't follow the links again.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from serve.errors import RepositoryError

__all__ = ["inside", "printable", "read_limited", "regular_file"]


def inside(path: Path, root: Path, shown: str) -> Path:
    """``path``'s real path, which must exist strictly inside ``root`` (a real path)."""
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        reason = "is a broken symlink" if path.is_symlink() else "does not exist"
        raise RepositoryError(shown, reason) from None
    except (OSError, RuntimeError) as error:  # a symlink loop, a permission
        raise RepositoryError(shown, f"can't be resolved ({_one_line(error)})") from None
    if real == root or not real.is_relative_to(root):
        raise RepositoryError(
            shown, f"resolves to {printable(str(real))}, outside the repository {root}"
        )
    return real


def regular_file(path: Path, root: Path, shown: str) -> Path:
    """``inside``, and a regular file (not a folder, FIFO or device)."""
    real = inside(path, root, shown)
    try:
        mode = os.stat(real).st_mode
    except OSError as error:
        raise RepositoryError(shown, f"can't be read ({_one_line(error)})") from None
    if not stat.S_ISREG(mode):
        raise RepositoryError(shown, "is not a regular file")
    return real


def read_limited(real: Path, shown: str, limit: int) -> str:
    """A regular file's text (UTF-8; a leading byte-order mark dropped), at most ``limit`` bytes."""
    try:
        with real.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise RepositoryError(shown, f"can't be read ({_one_line(error)})") from None
    if len(data) > limit:
        raise RepositoryError(shown, f"is larger than {limit} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RepositoryError(shown, f"is not UTF-8 (byte {error.start})") from None


def printable(text: str) -> str:
    """``text`` as is when it is printable, else quoted with escapes: messages stay one line."""
    return text if text.isprintable() else repr(text)


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return printable(str(error))
