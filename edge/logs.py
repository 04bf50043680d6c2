"""Log lines as text (the default) or, with LOG_FORMAT=json, one JSON object each.

gunicorn's own lines (its master and workers) and the gateway's go through `JsonFormatter`;
in JSON mode gunicorn's access log is off (gunicorn.conf.py) and the gateway writes its own
access line per request (edge/observe.py), with the fields a log pipeline wants. This module
imports only the standard library: gunicorn's master loads it from its log configuration.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "opendify.access"
# Fields of a LogRecord that are not the caller's `extra`.
_RECORD_FIELDS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update((key, value) for key, value in record.__dict__.items() if key not in _RECORD_FIELDS)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def gunicorn_log_config(json_lines: bool) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: JSON lines for its error log (empty: gunicorn's own text)."""
    if not json_lines:
        return {}
    formatter = {"()": f"{__name__}.JsonFormatter"}
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"error_console": handler},
        "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False}},
        "root": {"level": "INFO", "handlers": ["error_console"]},
    }
