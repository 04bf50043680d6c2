"""What each request leaves behind: its metrics (dify_io/metrics.py), its request id on every
log line, and, with LOG_FORMAT=json, one access log line.

A request is followed from `begin` (the first hook) to the moment the server closes its
response, which for a stream is its last byte (or the client leaving). On the way the
answering route reports its Answer (`answered`): the model and, for the end, the usage and Dify
ids the answer's runs learned. The time to first token is taken when the Answer hands its
first output (not a keep-alive, not an error) to the rendering: for a stream, when it is
written to the client; for a JSON answer, when it arrived from Dify.

The request id lives in a context variable (dify_io/request_context.py) as well as in Flask's
`g`: a stream's body is sent after Flask has popped the request context, and the lines logged
then (the translator's warnings, a failed stop call, ...) must carry it too. It is set in
`begin` and cleared when the response is closed.

Counting never breaks a response: a failing metric is logged, and the stream gauge and the
access line still happen.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from flask import Response, g, has_request_context, request

from config import Settings
from dify_io import metrics
from dify_io.request_context import REQUEST_ID
from edge.logs import ACCESS_LOGGER, TEXT_FORMAT, JsonFormatter
from engine.answer import Answer

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)
_V1_PREFIXES = re.compile(r"^(?:/v1)+")


@dataclass
class RequestRecord:
    started: float  # time.perf_counter() at the first hook
    json_log: bool
    model: str = ""  # the Dify app's name, once the request reached one
    app_mode: str | None = None
    stream: bool | None = None
    first_output: float | None = None  # seconds to the answer's first output
    answer: Answer | None = None
    stream_counted: bool = False  # counted in opendify_streams_active


def configure_logging(settings: Settings) -> None:
    """Text lines as before, or JSON lines (LOG_FORMAT=json): the application's on stderr with
    the request id of the request they belong to (greenlets a request spawns included), the
    access lines where ACCESS_LOG says."""
    if settings.log_format != "json":
        logging.basicConfig(level=settings.log_level, format=TEXT_FORMAT)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_with_request_id)
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
    if settings.access_log:
        target = logging.StreamHandler(sys.stdout) if settings.access_log == "-" else logging.FileHandler(
            settings.access_log)
        target.setFormatter(JsonFormatter())
        access_log.addHandler(target)
    else:
        access_log.disabled = True


def _with_request_id(record: logging.LogRecord) -> bool:
    if not hasattr(record, "request_id"):
        request_id = REQUEST_ID.get()
        if request_id is None and has_request_context():
            request_id = g.get("request_id")
        if request_id is not None:
            record.request_id = request_id
    return True


def begin(json_log: bool, request_id: str) -> None:
    REQUEST_ID.set(request_id)
    g.record = RequestRecord(time.perf_counter(), json_log)


def answered(answer: Answer, stream: bool) -> None:
    """The route committed to an answer (its first output may not have come yet)."""
    record: RequestRecord | None = g.get("record")
    if record is None:
        return
    record.answer, record.stream = answer, stream
    answer.on_first_output = partial(_first_output, record)
    if stream:
        record.stream_counted = _count("streams_active +1", metrics.stream_opened)


def _first_output(record: RequestRecord, now: float) -> None:
    """The answer handed its first output to the rendering."""
    record.first_output = now - record.started
    _count("time to first token", metrics.first_token, record.model, record.first_output)


def reached_app(name: str, mode: str) -> None:
    """The Dify app the request's model named."""
    record: RequestRecord | None = g.get("record")
    if record is not None:
        record.model, record.app_mode = name, mode


def finish_on_close(response: Response) -> None:
    """Count the request and log it when the server is done with the response."""
    record: RequestRecord | None = g.pop("record", None)
    if record is None:
        return
    route = request.url_rule.rule if request.url_rule is not None else "unknown"
    facts = (route, request.method, request.path, response.status_code, g.get("request_id"),
             _key_hash(g.get("client_key")))
    response.call_on_close(lambda: _finish(record, *facts))


def _finish(record: RequestRecord, route: str, method: str, path: str, status: int, request_id: str | None,
            key_hash: str | None) -> None:
    seconds = time.perf_counter() - record.started
    usage: dict[str, int] = {}
    task_ids: list[str] = []
    conversation_id = None
    try:
        route = _V1_PREFIXES.sub("", route) or "/"
        _count("the request", metrics.request_done, route, record.model, status, seconds)
        if record.answer is not None:
            record.answer.on_first_output = None
            usage, task_ids, conversation_id = record.answer.summary()
            _count("tokens", metrics.tokens, record.model, usage)
    finally:
        try:
            if record.stream_counted:
                record.stream_counted = False
                _count("streams_active -1", metrics.stream_closed)
            if record.json_log:
                fields: dict[str, Any] = {
                    "request_id": request_id, "method": method, "path": path, "status": status,
                    "model": record.model or None, "app_mode": record.app_mode, "stream": record.stream,
                    "duration_ms": round(seconds * 1000, 1),
                    "ttfb_ms": None if record.first_output is None else round(record.first_output * 1000, 1),
                    "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
                    "dify_task_ids": task_ids, "dify_conversation_id": conversation_id, "key_hash": key_hash,
                }
                access_log.info("%s %s %s", method, path, status, extra=fields)
        finally:
            record.answer = None
            REQUEST_ID.set(None)


def _count(what: str, count: Callable[..., None], *args: Any) -> bool:
    """Run one metric update; a failure is logged, never raised into a response."""
    try:
        count(*args)
    except Exception:
        log.exception("counting %s failed", what)
        return False
    return True


def _key_hash(key: str | None) -> str | None:
    """Which client key was used, without the key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else None
