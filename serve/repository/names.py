"""Which names the repository accepts: model folders, and files named in config.pbtxt.

A name is one path component made of ASCII letters, digits, ``_``, ``.`` and ``-``, 1 to 255
characters, that starts with neither a dot nor ``-`` and holds no ``..``. Stricter than Triton
(which takes any folder name), so a name is safe in a path, a log line, a command line and a gRPC
string.
Version folders follow Triton's rule instead: see ``version_number``.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_LENGTH", "name_problem", "version_number"]

MAX_NAME_LENGTH = 255
# Versions are int64 on the wire (Triton's model_version).
_MAX_VERSION = 2**63 - 1
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]+")
_VERSION = re.compile(r"[1-9][0-9]*")


def name_problem(name: str) -> str | None:
    """Why ``name`` can't name a model or a file of one (a phrase to follow "name"), or None."""
    if not name:
        return "is empty"
    if "\0" in name:
        return "contains a NUL character"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in name):
        return "contains a control character"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with a dot"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    if not _ALLOWED.fullmatch(name):
        return "has characters other than ASCII letters, digits, '_', '.' and '-'"
    if name.startswith("-"):
        return "starts with '-'"
    return None


def version_number(name: str) -> int | None:
    """The version a folder name stands for, or None when Triton ignores the folder: the name must
    be ASCII digits not starting with 0 (so ``01``, ``v2``, ``+3``, ``1_0`` are not versions) and
    fit in an int64."""
    if not _VERSION.fullmatch(name):
        return None
    number = int(name)
    return number if number <= _MAX_VERSION else None
