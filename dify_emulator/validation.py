"""Request checks in Dify's order: auth, JSON body and `user`, schema (rendered
per server generation), conversation, input form, files."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from flask import request

from .apps import App
from .errors import (
    DifyError,
    bad_request,
    forbidden,
    invalid_param,
    unauthorized,
    unknown_error,
)
from .store import State

_PYDANTIC_DOCS = "https://errors.pydantic.dev/2.12/v/"
_BAD_JSON = "The browser (or proxy) sent a request that this server could not understand."
_NOT_JSON = "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."

# pydantic error type -> message, for the schema problems the emulator detects.
_PYDANTIC_TEXT = {
    "missing": "Field required",
    "dict_type": "Input should be a valid dictionary",
    "string_type": "Input should be a valid string",
    "list_type": "Input should be a valid list",
    "literal_error": "Input should be 'blocking' or 'streaming'",
    "value_error": "Value error, conversation_id must be a valid UUID",
}
# The same problems as reqparse (flask-restful / flask-restx) described them.
_REQPARSE_TEXT = {
    "missing": "Missing required parameter in the JSON body",
    "dict_type": "dictionary update sequence element #0 has length 1; 2 is required",
    "string_type": "Input should be a string",
    "list_type": "Input should be a list",
    "literal_error": "The value '{value}' is not a valid choice for 'response_mode'.",
    "value_error": "{value} is not a valid uuid",
}


def authenticate(apps: dict[str, App]) -> App:
    """Bearer app-key auth with Dify's exact failure messages (docs/dify.md 2.2)."""
    header = request.headers.get("Authorization")
    if header is None or " " not in header:
        raise unauthorized("Authorization header must be provided and start with 'Bearer'")
    scheme, token = header.split(None, 1)
    if scheme.lower() != "bearer":
        raise unauthorized("Authorization scheme must be 'Bearer'")
    app = apps.get(token.strip())
    if app is None:
        raise unauthorized("Access token is invalid")
    if app.api_disabled:
        raise forbidden("The app's API service has been disabled.")
    return app


def read_json_body() -> dict[str, Any]:
    """The JSON body, with Flask's 415 / 400 answers for a wrong type or bad JSON."""
    if not request.is_json:
        raise DifyError(415, "unsupported_media_type", _NOT_JSON)
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise bad_request("Invalid JSON payload received or JSON payload is empty.")
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request(_BAD_JSON) from None
    if not isinstance(body, dict):
        # Dify calls .get("user") on the parsed body and crashes on anything else.
        raise unknown_error()
    return body


def require_user(body: dict[str, Any]) -> str:
    user = body.get("user")
    if not user:
        raise invalid_param("Arg user must be provided.")
    return str(user)


# -- schema ------------------------------------------------------------------------------


@dataclass
class Problem:
    field: str
    kind: str
    value: Any


@dataclass
class Payload:
    """A generation request body after schema checks."""

    inputs: dict[str, Any]
    query: str
    response_mode: str
    conversation_id: str | None
    files: list[Any]
    auto_generate_name: bool


def check_payload(
    body: dict[str, Any], profile: str, model: str, *, chat: bool = False, query: bool = False
) -> Payload:
    """Schema of ChatRequestPayload / CompletionRequestPayload / WorkflowRunPayload."""
    problems: list[Problem] = []
    inputs = body.get("inputs")
    if "inputs" not in body or inputs is None:
        problems.append(Problem("inputs", "missing", body))
    elif not isinstance(inputs, dict):
        problems.append(Problem("inputs", "dict_type", inputs))
    text = body.get("query", "")
    if chat and "query" not in body:
        problems.append(Problem("query", "missing", body))
    elif (chat or query) and not isinstance(text, str):
        problems.append(Problem("query", "string_type", text))
    files = body.get("files")
    if files is not None and not isinstance(files, list):
        problems.append(Problem("files", "list_type", files))
    mode = body.get("response_mode")
    if mode is not None and mode not in ("blocking", "streaming"):
        problems.append(Problem("response_mode", "literal_error", mode))
    conversation_id = None
    if chat:
        try:
            conversation_id = _conversation_id(body.get("conversation_id"))
        except ValueError:
            problems.append(Problem("conversation_id", "value_error", body.get("conversation_id")))
    if problems:
        raise schema_error(profile, model, problems)
    return Payload(
        inputs=inputs,
        query=text if isinstance(text, str) else "",
        response_mode=mode or "blocking",
        conversation_id=conversation_id,
        files=files or [],
        auto_generate_name=bool(body.get("auto_generate_name", True)),
    )


def _conversation_id(value: Any) -> str | None:
    """None or blank means a new conversation; anything else must be a UUID (ValueError)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("conversation_id must be a valid UUID")
    value = value.strip()
    return str(uuid.UUID(value)) if value else None


_HELP = {"inputs": "Input parameters for chat", "query": "The query string", "files": "Files", "response_mode": ""}


def schema_error(profile: str, model: str, problems: list[Problem]) -> DifyError:
    """Render schema problems like pydantic (>= 1.11), flask-restx (1.8-1.10) or flask-restful (<= 1.7)."""
    if profile == "modern":
        count = len(problems)
        lines = [f"{count} validation error{'s' if count > 1 else ''} for {model}"]
        for p in problems:
            lines.append(p.field)
            lines.append(
                f"  {_PYDANTIC_TEXT[p.kind]} [type={p.kind}, input_value={_short_repr(p.value)}, "
                f"input_type={type(p.value).__name__}]"
            )
            lines.append(f"    For further information visit {_PYDANTIC_DOCS}{p.kind}")
        return invalid_param("\n".join(lines))
    texts = {p.field: _REQPARSE_TEXT[p.kind].format(value=p.value) for p in problems}
    if profile == "restx":
        errors = {name: f"{_HELP.get(name, name)} {text}".strip() for name, text in texts.items()}
        return DifyError(
            400, "invalid_param", "", body={"errors": errors, "message": "Input payload validation failed"}
        )
    name, text = next(iter(texts.items()))
    return DifyError(400, "invalid_param", text, body={"code": "invalid_param", "message": text, "params": name})


def _short_repr(value: Any) -> str:
    """pydantic shortens long input reprs around an ellipsis."""
    text = repr(value)
    return text if len(text) <= 50 else text[:25] + "..." + text[-24:]


# -- input form and files --------------------------------------------------------------


def check_inputs(app: App, inputs: dict[str, Any]) -> None:
    """Validate inputs against the app's form, with Dify's messages (docs/dify.md 3.3)."""
    for kind, settings in app.form_variables():
        name = settings.get("variable", "")
        value = inputs.get(name)
        if value is None or value == "":
            if settings.get("required"):
                raise invalid_param(f"{name} is required in input form")
            continue
        if kind in ("text-input", "paragraph", "select"):
            if not isinstance(value, str):
                raise invalid_param(f"(type '{kind}') {name} in input form must be a string")
            options = settings.get("options") or []
            if kind == "select" and value not in options:
                raise invalid_param(f"{name} in input form must be one of the following: {options}")
            max_length = settings.get("max_length")
            if max_length and len(value) > max_length:
                raise invalid_param(f"{name} in input form must be less than {max_length} characters")
        elif kind == "number":
            try:
                float(value)
            except (TypeError, ValueError):
                raise invalid_param(f"{name} in input form must be a valid number") from None


def resolve_files(state: State, app: App, user: str, files: list[Any]) -> list[dict[str, Any]]:
    """Check request files; local files must have been uploaded by the same user of the same app.

    Like Dify, files are dropped without a word when the app has file upload off.
    Remote URLs are accepted as given and never fetched.
    """
    if not files or not app.file_upload_enabled:
        return []
    limit = app.file_upload.get("number_limits") or app.file_upload.get("image", {}).get("number_limits") or 3
    if len(files) > limit:
        raise invalid_param(f"Number of files exceeds the maximum limit {limit}")
    resolved = []
    for mapping in files:
        if not isinstance(mapping, dict) or not mapping.get("transfer_method"):
            raise invalid_param("transfer_method is required in file mapping")
        method = mapping["transfer_method"]
        entry: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "type": mapping.get("type", "image"),
            "transfer_method": method,
            "belongs_to": "user",
        }
        if method == "local_file":
            upload = state.find_file(app.key, user, str(mapping.get("upload_file_id") or ""))
            if upload is None:
                raise invalid_param("Invalid upload file id")
            entry.update(
                filename=upload.name,
                url=f"/files/{upload.id}/file-preview",
                mime_type=upload.mime_type,
                size=upload.size,
                upload_file_id=upload.id,
            )
        elif method == "remote_url":
            url = mapping.get("url") or mapping.get("remote_url")
            if not url:
                raise invalid_param("Invalid file url")
            entry.update(filename=str(url).rsplit("/", 1)[-1], url=url, mime_type=None, size=-1, upload_file_id=None)
        else:
            raise invalid_param(f"Invalid transfer method: {method}")
        allowed = app.allowed_file_types()
        if allowed is not None and entry["type"] != "custom" and entry["type"] not in allowed:
            # Dify's file factory raises a ValueError, which the service API answers as invalid_param.
            raise invalid_param(f"File validation failed for file: {entry['filename']}")
        resolved.append(entry)
    return resolved
