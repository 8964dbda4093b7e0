"""The server's log lines: text for people, or JSON for log collectors (``--log-format``).

A JSON line is one object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, then
the fields a caller passed as ``extra`` (an access line's request id, status, latency...), and
``exc_info`` as a string when there is a traceback.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A worker of --workers says which one it is.
WORKER_TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"

# Every attribute a LogRecord has without ``extra`` (and those formatting adds): the rest are
# the caller's fields.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",  # Python 3.12+
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``process_name`` adds ``process`` (a --workers worker's)."""

    def __init__(self, *, process_name: bool = False) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._process_name:
            line["process"] = record.processName
        for key, value in vars(record).items():
            # A caller's field never hides one of ours.
            if key not in _RECORD_ATTRIBUTES:
                line.setdefault(key, value)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        # ASCII only, and default=str: a line is always one line of valid JSON, whatever a field
        # holds.
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: str, *, process_name: bool = False) -> None:
    """Logs at ``level`` and above to stderr as ``log_format`` (text or json), unless logging is
    configured already (by code that embeds the server, say)."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process_name=process_name))
    else:
        handler.setFormatter(logging.Formatter(WORKER_TEXT_FORMAT if process_name else TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
