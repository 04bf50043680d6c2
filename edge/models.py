"""GET /v1/models and /v1/models/<id>: each configured Dify app is one model."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from core.apps import DifyApp
from core.errors import model_not_found
from edge.wiring import current_gateway

bp = Blueprint("models", __name__)


def _model(model_id: str, app: DifyApp) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": app.created, "owned_by": "dify",
            "description": app.description, "dify_app_mode": app.mode}


@bp.get("/models")
def list_models() -> Response:
    models = current_gateway().registry.models()
    return jsonify({"object": "list", "data": [_model(model_id, app) for model_id, app in models.items()]})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    """By any name of the app: its exact id, URL-encoded (`+` from openai 0.28), or its slug."""
    found = current_gateway().registry.model(model_id)
    if found is None:
        raise model_not_found(model_id)
    return jsonify(_model(*found))
