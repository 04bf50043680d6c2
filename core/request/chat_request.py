"""Validation of OpenAI chat requests.

Clients send many fields OpenDify does not use (docs/clients.md rule 8): unknown fields and
explicit nulls are accepted and ignored. What OpenDify does use is checked here, and a bad
value is a 400 naming the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import invalid_request
from core.request.content import content_text
from core.request.tools import ToolRequest, parse_tool_request

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
INSTRUCTION_ROLES = {"system", "developer"}


@dataclass(frozen=True)
class RequestLimits:
    """MAX_CHOICES, MAX_MESSAGES and MAX_PROMPT_CHARS: what one request may ask for."""

    max_choices: int = 8
    max_messages: int = 1000
    max_prompt_chars: int = 1_000_000


DEFAULT_LIMITS = RequestLimits()


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    user: str | None
    inputs: dict[str, Any]  # Dify app inputs (e.g. openai SDK extra_body={"inputs": {...}})
    n: int = 1
    tools: ToolRequest | None = None  # tools/functions offered to the app, if any
    stop: tuple[str, ...] = ()
    response_format: dict[str, Any] | None = None  # json_object / json_schema; None for text


def require_model(body: Any, model: str | None = None) -> str:
    """The model a request names (`model` from the path on legacy engine routes, else the
    body's), stripped; the body must be a JSON object."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    model = model or body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    return model.strip()


def optional_field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], label: str) -> Any:
    """`body[name]` if present (None otherwise); a value of another type is a 400 naming it."""
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise invalid_request(f"'{name}' must be {label}.", param=name, code="invalid_type")
    return value


def choice_count(body: dict[str, Any], max_choices: int) -> int:
    """`n`: how many answers to generate (each one Dify run)."""
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_choices:
        raise invalid_request(f"'n' must be a whole number from 1 to {max_choices}.", param="n", code="invalid_value")
    return n


def check_size(messages: list[dict[str, Any]], max_messages: int, max_chars: int) -> None:
    """Refuse histories beyond the configured size before any work is done on them."""
    if len(messages) > max_messages:
        raise invalid_request(f"'messages' has {len(messages)} messages; at most {max_messages} are accepted "
                              "(MAX_MESSAGES).", param="messages", code="context_length_exceeded")
    chars = sum(len(content_text(message.get("content"))) for message in messages)
    if chars > max_chars:
        raise invalid_request(f"The messages hold {chars} characters of text; at most {max_chars} are accepted "
                              "(MAX_PROMPT_CHARS).", param="messages", code="context_length_exceeded")


def parse_chat_request(body: Any, model: str | None = None, limits: RequestLimits = DEFAULT_LIMITS) -> ChatRequest:
    """Check a /chat/completions body; `model` comes from the path on legacy engine routes."""
    model = require_model(body, model)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise invalid_request("'messages' is a required property and must be an array.", param="messages",
                              code="missing_required_parameter")
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", param="messages", code="invalid_value")
    for index, message in enumerate(messages):
        _check_message(message, index)
    stream = bool(optional_field(body, "stream", bool, "a boolean"))
    options = optional_field(body, "stream_options", dict, "an object") or {}
    user = optional_field(body, "user", str, "a string")
    inputs = optional_field(body, "inputs", dict, "an object of Dify app inputs") or {}
    chat = ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=stream and options.get("include_usage") is True,
        user=user.strip() or None if user else None,
        inputs=inputs,
        n=choice_count(body, limits.max_choices),
        tools=parse_tool_request(body),
        stop=stop_sequences(body),
        response_format=json_format(body),
    )
    check_size(messages, limits.max_messages, limits.max_prompt_chars)
    return chat


def stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    """`stop`: a string or up to 4 strings where the answer is cut (applied by the gateway)."""
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(item, str) for item in stops):
        raise invalid_request("'stop' must be a string or an array of at most 4 strings.", param="stop",
                              code="invalid_value")
    return tuple(item for item in stops if item)


# LangChain recognises this exact message and tells its users to use function calling.
JSON_SCHEMA_UNSUPPORTED = "'response_format' of type 'json_schema' is not supported with this model"


def json_format(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format")
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return response_format
    if kind == "json_schema":
        if not isinstance(response_format.get("json_schema"), dict):
            raise invalid_request(JSON_SCHEMA_UNSUPPORTED + ": 'json_schema' must be an object with a schema.",
                                  param="response_format", code="invalid_value")
        return response_format
    raise invalid_request("'response_format.type' must be text, json_object or json_schema.",
                          param="response_format", code="invalid_value")


def _check_message(message: Any, index: int) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid_request(f"'{where}' must be an object.", param=where, code="invalid_type")
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise invalid_request(
            f"'{where}.role' must be one of {', '.join(sorted(ROLES))} (got {role!r}).",
            param=f"{where}.role", code="invalid_value")
    content = message.get("content")
    if content is None:
        # Assistant turns that only call tools have no content; every other role needs it.
        if role in ("assistant", "function"):
            return
        raise invalid_request(f"'{where}.content' is required for role '{role}'.", param=f"{where}.content",
                              code="missing_required_parameter")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise invalid_request(f"'{where}.content' must be a string or an array of content parts.",
                              param=f"{where}.content", code="invalid_type")
    for part_index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise invalid_request(f"'{where}.content[{part_index}]' must be an object with a 'type'.",
                                  param=f"{where}.content[{part_index}]", code="invalid_type")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise invalid_request(f"'{where}.content[{part_index}].text' must be a string.",
                                  param=f"{where}.content[{part_index}].text", code="invalid_type")
