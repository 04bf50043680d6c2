"""GET /openapi.yaml and /v1/openapi.yaml: the OpenAPI description of this gateway (no key needed)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint, Response

from core.errors import OpenAIError

bp = Blueprint("docs", __name__)

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"


@cache
def _spec() -> bytes | None:
    try:
        return SPEC_PATH.read_bytes()
    except OSError:
        return None


@bp.get("/openapi.yaml")
@bp.get("/v1/openapi.yaml")
def openapi_document() -> Response:
    spec = _spec()
    if spec is None:
        raise OpenAIError(404, "This installation has no openapi.yaml.", code="unknown_url")
    return Response(spec, mimetype="application/yaml")
