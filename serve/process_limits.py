"""Process limits a server needs beyond a shell's defaults.

Every connection holds a file descriptor, and the usual soft limit (1,024) let 1,100 silent
connections lock new clients out; the hard limit is what the operator allows, so the server takes
all of it at start-up.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["raise_open_files_limit"]

log = logging.getLogger(__name__)


def raise_open_files_limit() -> int:
    """Raises the soft limit on open files to the hard limit; returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or hard == resource.RLIM_INFINITY:  # nothing to take (or no number to ask)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as error:
        log.warning("open-files limit stays %d: %s", soft, error)
        return soft
    log.debug("open-files limit raised from %d to %d", soft, hard)
    return hard
