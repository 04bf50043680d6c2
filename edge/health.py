"""Liveness and readiness probes (no key needed)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from edge.wiring import current_gateway

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Ready once at least one Dify app is known (so a model can be served)."""
    models = current_gateway().registry.models()
    status = 200 if models else 503
    return jsonify({"status": "ready" if models else "waiting for Dify", "models": len(models)}), status
