"""What every request passes through: request ids, CORS, access keys, JSON errors.

Errors are always OpenAI envelopes with `application/json` (never Flask's HTML pages,
never a redirect), CORS headers are on every response including errors and streams, and a
CORS preflight needs no key (docs/clients.md section 4).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import simplejson
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from config import Settings
from core.errors import OpenAIError, invalid_api_key, invalid_request, server_error
from dify_io import metrics
from edge import observe
from edge.admission import Admission
from edge.auth import key_is_valid, presented_key
from edge.ids import new_id

log = logging.getLogger(__name__)

_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SLASHES = re.compile(r"/{2,}")
# Paths a client may call without a key.
_OPEN_PATHS = {"/healthz", "/readyz", "/openapi.yaml", "/v1/openapi.yaml"}
_ALLOWED_HEADERS = (
    "Authorization, Content-Type, Accept, api-key, X-API-Key, OpenAI-Organization, OpenAI-Project, "
    "X-Request-Id, X-Dify-Conversation-Id, X-Stainless-Arch, X-Stainless-Lang, X-Stainless-OS, "
    "X-Stainless-Package-Version, X-Stainless-Retry-Count, X-Stainless-Runtime, X-Stainless-Runtime-Version, "
    "X-Stainless-Timeout, X-Stainless-Read-Timeout, X-Stainless-Async"
)
_EXPOSED_HEADERS = "X-Request-Id, Retry-After, X-Should-Retry, X-Dify-Conversation-Id"


def error_response(error: OpenAIError) -> Response:
    response = Response(simplejson.dumps(error.body()), status=error.status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def read_json() -> Any:
    """The request body as JSON, whatever the Content-Type (curl -d sends form-encoded)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    try:
        raw = request.get_data(cache=False)
    except HTTPException:
        raise  # 413 for a declared Content-Length over the limit
    except Exception:  # a malformed chunked body, a broken connection
        raise invalid_request("The request body could not be read.", code="invalid_body") from None
    if len(raw) >= limit:  # a chunked body is cut at the limit rather than refused
        raise RequestEntityTooLarge()
    if not raw.strip():
        raise invalid_request("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return simplejson.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise invalid_request(
            "We could not parse the JSON body of your request. (HINT: the body must be a JSON object sent with "
            "Content-Type: application/json, nested at most a few hundred levels deep.)", code="invalid_json") from None


def collapse_slashes(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """`/v1//chat/completions` (a base URL ending in a slash) is `/v1/chat/completions`:
    served, not redirected (NextChat does not follow redirects)."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if "//" in path:
            environ["PATH_INFO"] = _SLASHES.sub("/", path)
        return wsgi_app(environ, start_response)

    return app


def install(app: Flask, settings: Settings, admission: Admission) -> None:
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False  # collapse_slashes does it, without a redirect
    app.wsgi_app = collapse_slashes(app.wsgi_app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    open_paths = _OPEN_PATHS | ({"/metrics"} if settings.metrics_public else set())
    json_log = settings.log_format == "json"

    @app.before_request
    def admit() -> Response | None:
        incoming = request.headers.get("X-Request-Id", "")
        g.request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else new_id("req", "_")
        observe.begin(json_log, g.request_id)
        if request.method == "OPTIONS":
            return _preflight()
        g.client_key = presented_key(request.headers)
        if request.path.rstrip("/") in open_paths:
            return None
        if not settings.open_access and not key_is_valid(g.client_key, settings.valid_api_keys):
            return error_response(invalid_api_key())
        if request.method == "POST":  # every POST calls Dify
            if not admission.try_enter():
                metrics.admission_rejection()
                return error_response(OpenAIError(
                    503, "The gateway is at its limit of concurrent requests; retry shortly.", type="server_error",
                    code="overloaded", headers={"Retry-After": "1", "x-should-retry": "true"}))
            g.admitted = True
        return None

    @app.after_request
    def decorate(response: Response) -> Response:
        if g.pop("admitted", False):
            # Streams end after this hook: the slot is freed when the server closes the body.
            response.call_on_close(admission.leave)
        origin = _allowed_origin(request.headers.get("Origin"), settings.cors_allow_origins)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
            if origin != "*":
                response.headers["Vary"] = "Origin"
        response.headers["X-Request-Id"] = g.get("request_id") or new_id("req", "_")
        observe.finish_on_close(response)
        return response

    @app.errorhandler(OpenAIError)
    def openai_error(error: OpenAIError) -> Response:
        metrics.upstream_error(error)  # (counted once: the relays count the failures they see)
        return error_response(error)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 404:
            return error_response(OpenAIError(404, f"Unknown path: {request.method} {request.path}",
                                              code="unknown_url"))
        if status == 405:
            response = error_response(OpenAIError(405, f"Method {request.method} is not allowed on {request.path}",
                                                  code="method_not_allowed"))
            response.headers["Allow"] = ", ".join(error.valid_methods or [])
            return response
        if status == 413:
            return error_response(OpenAIError(413, "The request body is too large.", code="request_too_large"))
        if status < 500:
            return error_response(OpenAIError(status, error.description or "Bad request", code="invalid_request"))
        return error_response(server_error("The gateway failed to handle the request."))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(server_error("The gateway failed to handle the request."))


def _allowed_origin(origin: str | None, allowed: tuple[str, ...]) -> str | None:
    if "*" in allowed:
        return "*"
    if origin and origin in allowed:
        return origin
    return None


def _preflight() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    requested = request.headers.get("Access-Control-Request-Headers", "")
    # Reflect what the browser asks for: `*` would not cover Authorization.
    response.headers["Access-Control-Allow-Headers"] = requested or _ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = "86400"
    return response
