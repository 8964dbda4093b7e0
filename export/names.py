"""Which names a model repository accepts: model folders, and files named in config.pbtxt.

A name is one path component made of ASCII letters, digits, ``_``, ``.`` and ``-``, 1 to 255
characters, that starts with neither a dot nor ``-`` and holds no ``..``. Stricter than Triton
(which takes any folder name), so a name is safe in a path, a log line, a command line and a gRPC
string. The exporter writes entries under these names and the server reads them under the same
rule: it lives here, where both can import it.
"""

from __future__ import annotations

import re

__all__ = ["MAX_NAME_LENGTH", "name_problem"]

MAX_NAME_LENGTH = 255
_ALLOWED = re.compile(r"[A-Za-z0-9_.\-]+")


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
