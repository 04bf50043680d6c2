"""Dify's error bodies and how each server generation renders them.

Profiles: `modern` (>= 1.11), `restx` (1.8-1.10) and `legacy` (<= 1.7). They
differ in the 404 route-suggestion suffix, the `WWW-Authenticate` header on 401
and the shape of request-validation errors (see docs/dify.md 3.1 and 3.2).
"""

from __future__ import annotations

import difflib
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any

from flask import Response
from werkzeug.exceptions import NotFound

INTERNAL_ERROR_TEXT = (
    "The server encountered an internal error and was unable to complete your request. "
    "Either the server is overloaded or there is an error in the application."
)

#: Rules of Dify's web-app blueprint (`/api`), which flask-restx also offers as 404 suggestions.
WEB_API_RULES = (
    "/api/chat-messages",
    "/api/chat-messages/<string:task_id>/stop",
    "/api/completion-messages",
    "/api/completion-messages/<string:task_id>/stop",
    "/api/conversations",
    "/api/conversations/<uuid:c_id>",
    "/api/conversations/<uuid:c_id>/name",
    "/api/messages",
    "/api/workflows/run",
    "/api/workflows/tasks/<string:task_id>/stop",
    "/api/files/upload",
    "/api/parameters",
    "/api/meta",
    "/api/site",
)

_CONVERTER = re.compile(r"(<.*>)")

#: Names accepted by the `http_error` scenario directive.
HTTP_ERROR_NAMES = (
    "unauthorized",
    "forbidden",
    "not_found",
    "invalid_param",
    "completion_request_error",
    "provider_quota_exceeded",
    "provider_not_initialize",
    "too_many_requests",
    "rate_limit_error",
    "internal_server_error",
    "plugin_runtime_error",
    "html_502",
    "html_429",
    "html_404",
)

NGINX_502_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

CLOUDFLARE_1015_PAGE = """<!DOCTYPE html>
<html lang="en-US">
<head><title>Access denied | api.dify.ai used Cloudflare to restrict access</title></head>
<body>
<div id="cf-error-details">
<h1><span>Error</span><span>1015</span></h1>
<h2>You are being rate limited</h2>
<p>The owner of this website (api.dify.ai) has banned you temporarily from accessing this website.</p>
<p>error code: 1015</p>
</div>
</body>
</html>
"""


class DifyError(Exception):
    """An error answered as Dify's JSON error body `{"code", "message", "status"}`.

    `extra` keys are inserted before `status` (as Dify does for `params` and
    `details`); `body` replaces the whole body (validation errors of older servers).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.body = body


class RawError(Exception):
    """An error answered with a non-JSON body (HTML pages of proxies and of Flask)."""

    def __init__(self, status: int, body: str, content_type: str) -> None:
        super().__init__(f"{status} raw error page")
        self.status = status
        self.body = body
        self.content_type = content_type


def restx_json(obj: Any) -> str:
    """Body text as flask-restx writes it: `json.dumps` defaults plus a newline."""
    return json.dumps(obj) + "\n"


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A flask-restx style JSON response (metadata, stop, errors, uploads)."""
    return Response(restx_json(obj), status=status, mimetype="application/json", headers=headers)


def route_suggestion(message: str, path: str, rules: Iterable[str]) -> str:
    """Append flask-restx's "did you mean" text (RESTX_ERROR_404_HELP) to a 404 message."""
    by_stripped = {_CONVERTER.sub("", rule): rule for rule in rules}
    matches = difflib.get_close_matches(path, list(by_stripped))
    if not matches:
        return message
    prefix = (message.rstrip(".") + ". ") if message else ""
    suggestions = " or ".join(by_stripped[m] for m in matches)
    return f"{prefix}You have requested this URI [{path}] but did you mean {suggestions} ?"


def render_error(err: DifyError, profile: str, path: str, rules: Iterable[str]) -> Response:
    """Render a DifyError the way the given server generation would."""
    headers: dict[str, str] = {}
    if err.body is not None:
        body = err.body
    else:
        message = err.message
        if err.status == 404 and profile != "legacy":
            message = route_suggestion(message, path, rules)
        body = {"code": err.code, "message": message, **err.extra, "status": err.status}
    if err.status == 401 and profile != "legacy":
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return json_response(body, err.status, headers)


def render_raw(err: RawError) -> Response:
    return Response(err.body, status=err.status, content_type=err.content_type)


def unauthorized(message: str) -> DifyError:
    return DifyError(401, "unauthorized", message)


def forbidden(message: str) -> DifyError:
    return DifyError(403, "forbidden", message)


def invalid_param(message: str) -> DifyError:
    return DifyError(400, "invalid_param", message)


def not_found(message: str = "Conversation Not Exists.") -> DifyError:
    return DifyError(404, "not_found", message)


def bad_request(message: str) -> DifyError:
    return DifyError(400, "bad_request", message)


def not_chat_app() -> DifyError:
    return DifyError(400, "not_chat_app", "Please check if your app mode matches the right API route.")


def not_workflow_app() -> DifyError:
    return DifyError(400, "not_workflow_app", "Please check if your app mode matches the right API route.")


def app_unavailable() -> DifyError:
    return DifyError(400, "app_unavailable", "App unavailable, please check your app configurations.")


def too_many_requests(app_id: str, limit: int, variant: str) -> DifyError:
    """The app concurrency limit: documented 429, but stock flask-restx renders it as 400."""
    message = (
        "Too many requests. Please try again later. "
        f"The current maximum concurrent requests allowed for {app_id} is {limit}."
    )
    if variant == "400":
        return invalid_param(message)
    return DifyError(429, "too_many_requests", message)


def internal_server_error() -> DifyError:
    return DifyError(500, "internal_server_error", INTERNAL_ERROR_TEXT)


def unknown_error() -> DifyError:
    """What Dify answers for an unhandled exception (note the key order)."""
    return DifyError(500, "unknown", "", body={"message": "Internal Server Error", "code": "unknown", "status": 500})


def named_http_error(spec: str | dict[str, Any], app_id: str, concurrency_error: str) -> Exception:
    """The pre-stream error selected by the `http_error` scenario directive (a name from HTTP_ERROR_NAMES)."""
    if isinstance(spec, dict):
        status = int(spec.get("status", 400))
        return DifyError(status, str(spec.get("code", "invalid_param")), str(spec.get("message", "")))
    builders = {
        "unauthorized": lambda: unauthorized("Access token is invalid"),
        "forbidden": lambda: forbidden("The app's API service has been disabled."),
        "not_found": not_found,
        "invalid_param": lambda: invalid_param("Emulated invalid parameter."),
        "completion_request_error": lambda: DifyError(
            400, "completion_request_error", "[openai] Error: emulated model failure"
        ),
        "provider_quota_exceeded": lambda: DifyError(
            400,
            "provider_quota_exceeded",
            "Your quota for Dify Hosted Model Provider has been exhausted. "
            "Please go to Settings -> Model Provider to complete your own provider credentials.",
        ),
        "provider_not_initialize": lambda: DifyError(
            400,
            "provider_not_initialize",
            "No valid model provider credentials found. "
            "Please go to Settings -> Model Provider to complete your provider credentials.",
        ),
        "too_many_requests": lambda: too_many_requests(app_id, 1, concurrency_error),
        "rate_limit_error": lambda: DifyError(
            429, "rate_limit_error", f"Workflow execution quota limit reached for tenant {app_id}"
        ),
        "internal_server_error": internal_server_error,
        "plugin_runtime_error": lambda: DifyError(
            502,
            "plugin_runtime_error",
            "PluginDaemonInternalServerError: emulated plugin daemon failure",
            extra={"details": {"request_id": str(uuid.uuid4())}},
        ),
        "html_502": lambda: RawError(502, NGINX_502_PAGE, "text/html"),
        "html_429": lambda: RawError(429, CLOUDFLARE_1015_PAGE, "text/html; charset=UTF-8"),
        "html_404": lambda: RawError(404, NotFound().get_body(), "text/html; charset=utf-8"),
    }
    return builders[spec]()
