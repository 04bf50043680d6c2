"""Log lines as text (the default) or, with LOG_FORMAT=json, one JSON object each.

gunicorn's own lines (its master and workers) and the gateway's go through `JsonFormatter`;
in JSON mode gunicorn's access log is off (gunicorn.conf.py) and the gateway writes its own
access line per request (edge/observe.py), with the fields a log pipeline wants. The few lines
the entry points write themselves, before logging is set up (the start banner, a bad setting's
error line), go through `console_line`, so that with LOG_FORMAT=json every line of the output is
one JSON object. This module imports only the standard library: gunicorn's master loads it from
its log configuration.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
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


def gunicorn_log_config(json_lines: bool, level: str = "INFO") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: JSON lines for its error log at LOG_LEVEL (empty: gunicorn's
    own text, at its `loglevel`)."""
    if not json_lines:
        return {}
    formatter = {"()": f"{__name__}.JsonFormatter"}
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"error_console": handler},
        "loggers": {"gunicorn.error": {"level": level, "handlers": ["error_console"], "propagate": False}},
        "root": {"level": level, "handlers": ["error_console"]},
    }


def json_requested(env: Mapping[str, str] | None = None) -> bool:
    """LOG_FORMAT=json, read from the environment itself: for a line written when the settings
    could not be read (the environment then holds .env's values too: load_settings merged them)."""
    return (os.environ if env is None else env).get("LOG_FORMAT", "").strip().lower() == "json"


def console_line(message: str, json_lines: bool, level: str = "INFO") -> str:
    """A line an entry point writes itself: `message` as it is, or one JSON object shaped like
    every logged line (logger `opendify`)."""
    if not json_lines:
        return message
    record = logging.makeLogRecord({"name": "opendify", "msg": message, "levelname": level,
                                    "levelno": logging.getLevelName(level)})
    return JsonFormatter().format(record)


def error_exit(message: str) -> SystemExit:
    """The exit of a start that cannot go on: `error: <message>` on stderr, as text or JSON."""
    return SystemExit(console_line(f"error: {message}", json_requested(), "ERROR"))
