"""The gateway's Prometheus metrics, added up over every gunicorn worker.

Each worker counts into files under PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess
mode; gunicorn.conf.py makes the directory at the master's start and marks dead workers), and
`GET /metrics` (edge/metrics.py) reads them all. This module sits in the lowest layer that
does I/O so that every layer can count: the edge counts requests, the relays count client
disconnects and upstream errors, a run counts its stop calls.

Counting is on unless METRICS=off (`enable` is called once per worker by create_app); every
function here is then a cheap no-op, so the overhead can be measured (bench/README.md).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.errors import OpenAIError

# Seconds: from a few milliseconds (an answer from a cache) to Dify's 20-minute limit.
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
_FIRST_TOKEN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("opendify_requests_total", "Requests answered, by route, model and HTTP status.",
                   ("route", "model", "status"))
DURATION = Histogram("opendify_request_duration_seconds", "Time from a request to the end of its answer "
                     "(of a stream: its last byte).", ("route", "model"), buckets=_DURATION_BUCKETS)
FIRST_TOKEN = Histogram("opendify_time_to_first_token_seconds", "Time from a request to its first output (not a "
                        "keep-alive): written to the client (streams), or arrived from Dify (JSON answers).",
                        ("model",), buckets=_FIRST_TOKEN_BUCKETS)
STREAMS = Gauge("opendify_streams_active", "Streams being relayed now.", multiprocess_mode="livesum")
UPSTREAM_ERRORS = Counter("opendify_upstream_errors_total", "Failures of Dify, by the error code the client got.",
                          ("kind",))
TOKENS = Counter("opendify_tokens_total", "Tokens Dify reported, by model and kind (prompt, completion).",
                 ("model", "kind"))
DISCONNECTS = Counter("opendify_client_disconnects_total", "Clients that left before their answer was complete.")
STOP_CALLS = Counter("opendify_dify_stop_calls_total", "Calls to Dify's stop endpoint for abandoned tasks.")
REJECTIONS = Counter("opendify_admission_rejections_total", "Requests refused at MAX_CONCURRENT_REQUESTS.")

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def request_done(route: str, model: str, status: int, seconds: float) -> None:
    if _enabled:
        REQUESTS.labels(route, model, str(status)).inc()
        DURATION.labels(route, model).observe(seconds)


def first_token(model: str, seconds: float) -> None:
    if _enabled:
        FIRST_TOKEN.labels(model).observe(seconds)


def stream_opened() -> None:
    if _enabled:
        STREAMS.inc()


def stream_closed() -> None:
    if _enabled:
        STREAMS.dec()


def tokens(model: str, usage: dict[str, int]) -> None:
    if _enabled:
        for kind in ("prompt", "completion"):
            if usage.get(f"{kind}_tokens"):
                TOKENS.labels(model, kind).inc(usage[f"{kind}_tokens"])


def upstream_error(error: OpenAIError) -> None:
    """Count a failure of Dify once, however many layers it passes through."""
    if _enabled and error.upstream and not error.counted:
        error.counted = True
        UPSTREAM_ERRORS.labels(error.code or error.type).inc()


def client_disconnect() -> None:
    if _enabled:
        DISCONNECTS.inc()


def stop_call() -> None:
    if _enabled:
        STOP_CALLS.inc()


def admission_rejection() -> None:
    if _enabled:
        REJECTIONS.inc()
