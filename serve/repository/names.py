"""Which names the repository accepts (``export.names``, shared with the exporter), and which
version folders it serves: Triton's rule, see ``version_number``.
"""

from __future__ import annotations

import re

from export.names import MAX_NAME_LENGTH, name_problem

__all__ = ["MAX_NAME_LENGTH", "name_problem", "version_number"]

# Versions are int64 on the wire (Triton's model_version).
_MAX_VERSION = 2**63 - 1
_VERSION = re.compile(r"[1-9][0-9]*")


def version_number(name: str) -> int | None:
    """The version a folder name stands for, or None when Triton ignores the folder: the name must
    be ASCII digits not starting with 0 (so ``01``, ``v2``, ``+3``, ``1_0`` are not versions) and
    fit in an int64."""
    if not _VERSION.fullmatch(name):
        return None
    number = int(name)
    return number if number <= _MAX_VERSION else None
