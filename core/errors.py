"""One error type for the whole gateway, rendered as OpenAI's error envelope.

Every failure a client can see is an `OpenAIError`: blueprints raise it, the app's error
handler renders it, and a stream that already started sends it as one `data:` event.
`from_dify_error` maps Dify's `{"code", "message", "status"}` bodies (before or inside a
stream) onto the status and code OpenAI clients act on (see docs/clients.md section 4).
"""

from __future__ import annotations

import re
from typing import Any


class OpenAIError(Exception):
    """An error with an HTTP status and the OpenAI envelope fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        upstream: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.upstream = upstream  # a failure of Dify, not of the request (metrics count these)
        self.counted = False  # already counted in opendify_upstream_errors_total

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"OpenAIError({self.status}, {self.code!r}, {self.message!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def invalid_api_key() -> OpenAIError:
    return OpenAIError(401, "Incorrect API key provided", code="invalid_api_key")


def server_error(message: str, status: int = 500, code: str | None = None, *, retry: bool = True) -> OpenAIError:
    headers = {} if retry else {"x-should-retry": "false"}
    return OpenAIError(status, message, type="server_error", code=code, headers=headers)


def upstream_failure(message: str, status: int = 502, code: str = "upstream_error", *,
                     retry: bool = True) -> OpenAIError:
    """A server error that Dify caused (a refusal, a fault, a broken or malformed answer)."""
    error = server_error(message, status, code, retry=retry)
    error.upstream = True
    return error


def upstream_unreachable(detail: str) -> OpenAIError:
    return upstream_failure(f"Dify is unreachable: {detail}", 503, "upstream_unavailable")


def upstream_timeout(detail: str) -> OpenAIError:
    return upstream_failure(f"Dify did not answer in time: {detail}", 504, "upstream_timeout")


def _rate_limited(message: str, retry_after: str = "1") -> OpenAIError:
    return OpenAIError(
        429, message, type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": retry_after}
    )


def _quota_exceeded(message: str) -> OpenAIError:
    return OpenAIError(429, message, type="insufficient_quota", code="insufficient_quota",
                       headers={"x-should-retry": "false"})


# Dify codes whose meaning has a direct OpenAI counterpart. Anything else keeps Dify's code
# and is classed by its status below.
_QUOTA_CODES = {"provider_quota_exceeded", "insufficient_quota"}
_CONFIG_CODES = {"provider_not_initialize", "model_currently_not_support", "app_unavailable", "agent_not_published"}
_MODE_CODES = {"not_chat_app", "not_workflow_app", "not_completion_app"}


def from_dify_error(status: int, body: Any, retry_after: str | None = None) -> OpenAIError:
    """Map a Dify error (HTTP status and parsed body, or an in-stream `error` event). It counts
    as Dify's failure (`upstream`, opendify_upstream_errors_total) when the client gets a 5xx
    (a Dify fault, the app key refused, a misconfigured app) or a 429 (Dify's or the model
    provider's limits); a 4xx the request caused (an invalid parameter, a context too long, an
    unknown conversation) is the client's."""
    error = _mapped_dify_error(status, body, retry_after)
    error.upstream = error.status >= 500 or error.status == 429
    return error


_RATE_LIMIT_TEXT = re.compile(r"rate[ _-]?limit|error code: 429|too many requests", re.IGNORECASE)
_QUOTA_TEXT = re.compile(r"insufficient_quota|exceeded your current quota", re.IGNORECASE)


def failure_from_message(message: str, text: str, retry_after: str = "1") -> OpenAIError | None:
    """The OpenAI error a failure's own words name, whatever code came with them (None when
    they name none): a context too long (400), a rate limit (429), an exhausted quota (429).
    Dify reports a failed workflow or chatflow run only as text (docs/dify.md 3.4), and a
    model error as `completion_request_error` whatever its cause. `text` is what the client
    reads."""
    lowered = message.lower()
    if "context length" in lowered or "maximum context" in lowered:
        return OpenAIError(400, text, param="messages", code="context_length_exceeded")
    if _QUOTA_TEXT.search(message):
        error = _quota_exceeded(text)
        error.upstream = True
        return error
    if _RATE_LIMIT_TEXT.search(message):
        error = _rate_limited(text, retry_after)
        error.upstream = True
        return error
    return None


def _mapped_dify_error(status: int, body: Any, retry_after: str | None) -> OpenAIError:
    if isinstance(body, dict):
        dify_code = str(body.get("code") or "")
        message = str(body.get("message") or body.get("errors") or "").strip()
        if isinstance(body.get("status"), int):
            status = body["status"]
    else:
        dify_code, message = "", ""
    message = message or f"Dify answered HTTP {status}"
    text = f"Dify: {message}"

    # The app concurrency limit renders as 429 or as 400 invalid_param; match the text.
    if status == 429 or dify_code in {"too_many_requests", "rate_limit_error"} or message.startswith(
        "Too many requests"
    ):
        return _rate_limited(text, retry_after or "1")
    if dify_code in _QUOTA_CODES:
        return _quota_exceeded(text)
    if named := failure_from_message(message, text, retry_after or "1"):
        return named
    if status in (401, 403):
        # The gateway's own Dify key was refused: the client can do nothing about it.
        return server_error(f"Dify refused the app key configured for this model ({message})", 502,
                            "upstream_auth_failed", retry=False)
    if dify_code in _CONFIG_CODES or dify_code in _MODE_CODES:
        return server_error(text, 502, dify_code, retry=False)
    if status == 404:
        return OpenAIError(404, text, code=dify_code or "not_found")
    if 400 <= status < 500:
        return OpenAIError(400, text, code=dify_code or "invalid_request")
    if status == 503:
        return server_error(text, 503, dify_code or "upstream_unavailable")
    if status == 504:
        return server_error(text, 504, dify_code or "upstream_timeout")
    return server_error(text, 502, dify_code or "upstream_error")
