"""The server's log lines: text for people, or JSON for log collectors (to be written)."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str, log_format: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
