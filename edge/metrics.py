"""GET /metrics: the Prometheus text format, added up over every gunicorn worker (dify_io/metrics.py).

A client key is needed when VALID_API_KEYS is set, unless METRICS_PUBLIC=true (edge/hooks.py).
"""

from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from core.errors import OpenAIError
from dify_io import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_page() -> Response:
    if not metrics.enabled():
        raise OpenAIError(404, "Metrics are off (METRICS=off).", code="unknown_url")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:  # a single process (not served through gunicorn.conf.py)
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
