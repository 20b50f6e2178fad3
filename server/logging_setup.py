"""Log output for both processes: plain text lines (the default), or one JSON object per line
(`--log-format json`) for log pipelines.

Structured fields travel on a record as `extra={"fields": {...}}`; the JSON format writes
them as top-level keys, the text format only writes the message. This module imports only
the standard library, so the engine process uses it too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys the JSON format writes itself; a field of the same name would overwrite them.
_RESERVED_KEYS = frozenset({"time", "level", "logger", "message", "exception",
                            "api_process"})


class LogFormatError(ValueError):
    """An unknown --log-format."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the
    record's structured fields, the process's own fields (say, which api process of
    several it is), and the exception's traceback if there is one."""

    def __init__(self, process_fields: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._process_fields = dict(process_fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self._process_fields,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({k: v for k, v in fields.items() if k not in _RESERVED_KEYS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def make_formatter(log_format: str, *, api_process: int | None = None) -> logging.Formatter:
    """api_process: this is api process N of several (--api-server-count): each line says
    so ("api_process": N, or "[api N]" after the logger's name)."""
    if log_format == "json":
        return JsonFormatter(None if api_process is None else {"api_process": api_process})
    if log_format == "text":
        if api_process is None:
            return logging.Formatter(TEXT_FORMAT)
        return logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"%(name)s[api {api_process}]"))
    raise LogFormatError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, "
                         f"got {log_format!r}")


def configure_logging(*, level: str, log_format: str, api_process: int | None = None) -> None:
    """Send every logger's records to stderr in the given format (replacing the root
    logger's handlers: this runs once, in a process's main)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(log_format, api_process=api_process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
