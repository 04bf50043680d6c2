"""Validation of Responses API requests (`POST /v1/responses`), turned into the chat request
the engine serves.

The Responses API says in items what chat completions say in messages: `instructions` is the
system prompt, a `message` item is a message (its `input_text`, `output_text`,
`input_image` and `input_file` parts become text, image and file parts), a `function_call`
item is an assistant turn's tool call, a `function_call_output` item is a tool result, and
`reasoning` items are dropped (Dify keeps no reasoning between turns). Function tools, also
inside `namespace` groups (Codex sends its tools so), are offered as chat tools are; hosted
tools that only OpenAI runs (web search, file search, computer use, ...) are left out of what
the app is told, since clients send them unasked. `text.format` asks for JSON as chat's
`response_format` does. A `previous_response_id` continues the Dify conversation its id
carries (core/response_ids.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import OpenAIError, invalid_request
from core.request.chat_request import ChatRequest, RequestLimits, check_size, json_format
from core.request.content import content_text
from core.request.tools import ToolRequest, ToolSpec, read_function, tool_request
from core.response_ids import continued_ids

ROLES = ("user", "assistant", "system", "developer")
# Tools OpenAI runs itself: a Dify app cannot, so they are not offered.
HOSTED_TOOLS = ("web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11",
                "file_search", "computer_use", "computer_use_preview", "code_interpreter", "image_generation",
                "mcp", "local_shell", "shell", "apply_patch", "custom")
# The Response object repeats these fields of the request (defaults as OpenAI answers them).
ECHOED = {"instructions": None, "max_output_tokens": None, "metadata": {}, "parallel_tool_calls": True,
          "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
          "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
          "top_p": 1.0, "truncation": "disabled", "user": None}


@dataclass(frozen=True)
class ResponsesRequest:
    chat: ChatRequest  # the conversation, as chat completions would carry it
    continues: tuple[str, str] | None  # (Dify conversation id, message id) of previous_response_id
    echoed: dict[str, Any] = field(default_factory=dict)  # the request fields the Response object repeats


def parse_responses_request(body: Any, limits: RequestLimits) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    messages = _instructions(body.get("instructions")) + _input_messages(body.get("input"))
    if not any(message["role"] == "user" or message["role"] == "tool" for message in messages):
        raise invalid_request("'input' must contain a user message or a function call output.", param="input",
                              code="invalid_value")
    continues = _continues(body.get("previous_response_id"))
    user = _optional(body, "user", str, "a string")
    inputs = _optional(body, "inputs", dict, "an object of Dify app inputs") or {}
    chat = ChatRequest(
        model=model.strip(),
        messages=messages,
        stream=bool(_optional(body, "stream", bool, "a boolean")),
        include_usage=False,
        user=user.strip() or None if user else None,
        inputs=inputs,
        tools=_tools(body),
        response_format=_text_format(body.get("text")),
    )
    check_size(messages, limits.max_messages, limits.max_prompt_chars)
    echoed = {name: default if body.get(name) is None else body[name] for name, default in ECHOED.items()}
    return ResponsesRequest(chat, continues, echoed)


def _optional(body: dict[str, Any], name: str, kind: type, label: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise invalid_request(f"'{name}' must be {label}.", param=name, code="invalid_type")
    return value


def _instructions(instructions: Any) -> list[dict[str, Any]]:
    if instructions is None:
        return []
    if not isinstance(instructions, str):
        raise invalid_request("'instructions' must be a string.", param="instructions", code="invalid_type")
    return [{"role": "system", "content": instructions}] if instructions.strip() else []


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        if not value.strip():
            raise invalid_request("'input' must not be empty.", param="input", code="invalid_value")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid_request("'input' must be a string or a non-empty array of items.", param="input",
                              code="missing_required_parameter")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if not isinstance(item, dict):
            raise invalid_request(f"'{where}' must be an object.", param=where, code="invalid_type")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where))
        elif kind == "reasoning":
            continue  # Dify keeps no reasoning between turns
        elif kind == "item_reference":
            raise invalid_request(f"'{where}' refers to a stored item, but OpenDify stores no items: send the item "
                                  "itself.", param=where, code="unsupported_parameter")
        else:
            raise invalid_request(f"'{where}.type' {kind!r} is not supported: send message, function_call, "
                                  "function_call_output or reasoning items.", param=f"{where}.type",
                                  code="invalid_value")
    return messages


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise invalid_request(f"'{where}.role' must be one of {', '.join(ROLES)} (got {role!r}).",
                              param=f"{where}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise invalid_request(f"'{where}.content' must be a string or an array of content parts.",
                              param=f"{where}.content", code="invalid_type")
    return {"role": role, "content": [_part(part, f"{where}.content[{index}]") for index, part in enumerate(content)]}


def _part(part: Any, where: str) -> dict[str, Any]:
    """A Responses content part as the chat content part it is."""
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise invalid_request(f"'{where}.text' must be a string.", param=f"{where}.text", code="invalid_type")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _stored_file(where, "image", "image_url (a URL or a data: URL)")
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise _stored_file(where, "file", "file_data (base64 or a data: URL) and filename")
        return {"type": "file", "file": {"file_data": data, "filename": part.get("filename") or ""}}
    raise invalid_request(f"'{where}' must be an object with a type: input_text, output_text, input_image or "
                          "input_file.", param=where, code="invalid_value")


def _stored_file(where: str, kind: str, what: str) -> OpenAIError:
    return invalid_request(f"'{where}': a {kind} must be sent inline, as {what}; OpenDify stores no files "
                           "(file_id and file_url are not supported).", param=where, code="unsupported_parameter")


def _add_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str) -> None:
    """A function_call item: a tool call of the assistant turn it belongs to (calls made in
    parallel arrive as consecutive items and share one turn)."""
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}' needs a call_id and a name.", param=where, code="missing_required_parameter")
    arguments = item.get("arguments")
    call = {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else ""}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"'{where}.call_id' is required.", param=f"{where}.call_id",
                              code="missing_required_parameter")
    output = item.get("output")
    text = output if isinstance(output, str) else content_text(
        [_part(part, f"{where}.output[{index}]") for index, part in enumerate(output)] if isinstance(output, list)
        else output)
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tools(body: dict[str, Any]) -> ToolRequest | None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid_request("'tools' must be an array.", param="tools", code="invalid_type")
    specs: list[ToolSpec] = []
    for index, tool in enumerate(tools or []):
        _add_tools(specs, tool, f"tools[{index}]")
    names = [spec.name for spec in specs]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise invalid_request(f"'tools' declares the function '{duplicate}' twice.", param="tools",
                              code="invalid_value")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in HOSTED_TOOLS:
        raise invalid_request(f"'tool_choice' requires the {choice['type']} tool, which a Dify app cannot run: only "
                              "function tools are offered.", param="tool_choice", code="unsupported_tool")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = {entry.get("name") for entry in choice.get("tools") or [] if isinstance(entry, dict)}
        specs = [spec for spec in specs if spec.name in allowed]
        choice = choice.get("mode") or "auto"
    return tool_request(tuple(specs), choice, "tool_choice", body.get("parallel_tool_calls") is not False)


def _add_tools(specs: list[ToolSpec], tool: Any, where: str) -> None:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind == "function":
        specs.append(read_function(tool, where))
    elif kind == "namespace":  # a group of tools: its function tools are offered like any other
        for index, member in enumerate(tool.get("tools") or []):
            _add_tools(specs, member, f"{where}.tools[{index}]")
    elif kind not in HOSTED_TOOLS:
        raise invalid_request(f"'{where}.type' must be function, namespace or a hosted tool type (got {kind!r}).",
                              param=f"{where}.type", code="invalid_value")


def _text_format(text: Any) -> dict[str, Any] | None:
    """`text.format` as chat's `response_format`: json_schema carries its schema flat here."""
    if text is None:
        return None
    text_format = text.get("format") if isinstance(text, dict) else None
    if text_format is None:
        return None
    if not isinstance(text_format, dict):
        raise invalid_request("'text.format' must be an object.", param="text.format", code="invalid_type")
    if text_format.get("type") == "json_schema":
        spec = {"name": text_format.get("name"), "schema": text_format.get("schema")}
        return json_format({"response_format": {"type": "json_schema", "json_schema": spec}})
    return json_format({"response_format": text_format})


def _continues(previous_response_id: Any) -> tuple[str, str] | None:
    if previous_response_id is None:
        return None
    continued = continued_ids(previous_response_id) if isinstance(previous_response_id, str) else None
    if continued is None:
        raise OpenAIError(404, f"Previous response with id {previous_response_id!r} not found: OpenDify stores no "
                               "responses, and only the ids of responses of Dify chat apps name a conversation to "
                               "continue.", param="previous_response_id", code="previous_response_not_found")
    return continued
