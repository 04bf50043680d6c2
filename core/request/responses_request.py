"""Validation of Responses API requests (`POST /v1/responses`), turned into the chat request
the engine serves.

The Responses API says in items what chat completions say in messages: `instructions` is the
system prompt, a `message` item is a message (its `input_text`, `output_text`,
`input_image` and `input_file` parts become text, image and file parts), a `function_call`
item is an assistant turn's tool call, a `function_call_output` item is a tool result, and
`reasoning` items are dropped (Dify keeps no reasoning between turns). A function call's
output is text: its `input_text` parts are kept, and an image or file part is refused (Dify
takes files only with user messages), never dropped. Function tools are offered as chat tools
are; those inside a `namespace` group (Codex sends some of its tools so) keep their name, unless
another tool has the same name: then they are offered as `<namespace>.<name>`, so the model can
tell them apart. Either way a call of one comes back as the bare `name` and its `namespace`
(`ResponsesRequest.namespaced`), and a `function_call` item with a `namespace` in the history
is shown to the model under the name it was offered. Hosted tools that only OpenAI runs (web
search, file search, computer use, ...) are left out of what the app is told, since clients
send them unasked. `text.format` asks for JSON as chat's `response_format` does. A
`previous_response_id` continues the Dify conversation its id carries (core/response_ids.py);
OpenAI's stored items and conversations (`item_reference`, `conversation`) are refused.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import OpenAIError, invalid_request
from core.request.chat_request import ChatRequest, RequestLimits, check_size, json_format, optional_field, require_model
from core.request.content import content_text
from core.request.tools import ToolRequest, ToolSpec, allowed_tools, read_function, tool_request
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
# A namespace's name: as a function's, so that `<namespace>.<name>` is unambiguous.
_NAMESPACE_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@dataclass(frozen=True)
class ResponsesRequest:
    chat: ChatRequest  # the conversation, as chat completions would carry it
    continues: tuple[str, str] | None  # (Dify conversation id, message id) of previous_response_id
    echoed: dict[str, Any] = field(default_factory=dict)  # the request fields the Response object repeats
    # The offered name of each function of a namespace -> (namespace, its own name), to write
    # back a call of it as OpenAI does.
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)


def parse_responses_request(body: Any, limits: RequestLimits) -> ResponsesRequest:
    model = require_model(body)
    if body.get("conversation") is not None:
        raise invalid_request("'conversation' names a conversation stored by OpenAI's Conversations API, but "
                              "OpenDify stores none: continue with previous_response_id, or send the whole history "
                              "in 'input'.", param="conversation", code="unsupported_parameter")
    tools, namespaced = _tools(body)
    offered = {pair: name for name, pair in namespaced.items()}  # (namespace, name) -> the offered name
    messages = _instructions(body.get("instructions")) + _input_messages(body.get("input"), offered)
    if not any(message["role"] == "user" or message["role"] == "tool" for message in messages):
        raise invalid_request("'input' must contain a user message or a function call output.", param="input",
                              code="invalid_value")
    continues = _continues(body.get("previous_response_id"))
    user = optional_field(body, "user", str, "a string")
    inputs = optional_field(body, "inputs", dict, "an object of Dify app inputs") or {}
    chat = ChatRequest(
        model=model,
        messages=messages,
        stream=bool(optional_field(body, "stream", bool, "a boolean")),
        include_usage=False,
        user=user.strip() or None if user else None,
        inputs=inputs,
        tools=tools,
        response_format=_text_format(body.get("text")),
    )
    check_size(messages, limits.max_messages, limits.max_prompt_chars)
    echoed = {name: default if body.get(name) is None else body[name] for name, default in ECHOED.items()}
    return ResponsesRequest(chat, continues, echoed, namespaced)


def _instructions(instructions: Any) -> list[dict[str, Any]]:
    if instructions is None:
        return []
    if not isinstance(instructions, str):
        raise invalid_request("'instructions' must be a string.", param="instructions", code="invalid_type")
    return [{"role": "system", "content": instructions}] if instructions.strip() else []


def _input_messages(value: Any, offered: dict[tuple[str, str], str]) -> list[dict[str, Any]]:
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
            _add_call(messages, item, where, offered)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where, offered))
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


def _add_call(messages: list[dict[str, Any]], item: dict[str, Any], where: str,
              offered: dict[tuple[str, str], str]) -> None:
    """A function_call item: a tool call of the assistant turn it belongs to (calls made in
    parallel arrive as consecutive items and share one turn)."""
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}' needs a call_id and a name.", param=where, code="missing_required_parameter")
    arguments = item.get("arguments")
    call = {"id": call_id, "type": "function",
            "function": {"name": _offered_name(item, name, where, offered),
                         "arguments": arguments if isinstance(arguments, str) else ""}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_calls" in last:
        last["tool_calls"].append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _offered_name(item: dict[str, Any], name: str, where: str, offered: dict[tuple[str, str], str]) -> str:
    """The name the model knows a function of the history by: a function of a namespace may
    be offered as `<namespace>.<name>`."""
    namespace = item.get("namespace")
    if namespace is None:
        return name
    if not isinstance(namespace, str):
        raise invalid_request(f"'{where}.namespace' must be a string.", param=f"{where}.namespace",
                              code="invalid_type")
    return offered.get((namespace, name), name)


def _call_output(item: dict[str, Any], where: str, offered: dict[tuple[str, str], str]) -> dict[str, Any]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise invalid_request(f"'{where}.call_id' is required.", param=f"{where}.call_id",
                              code="missing_required_parameter")
    message = {"role": "tool", "tool_call_id": call_id, "content": _output_text(item.get("output"), where)}
    name = item.get("name")
    if isinstance(name, str) and name:  # otherwise the call it answers names the function
        message["name"] = _offered_name(item, name, where, offered)
    return message


def _output_text(output: Any, where: str) -> str:
    """A function call's output: a string, or text parts. Dify takes files only with user
    messages, so an image or file part is refused rather than dropped."""
    if not isinstance(output, list):
        return content_text(output)  # a string as it is; JSON values as JSON text
    texts = []
    for index, part in enumerate(output):
        part_where = f"{where}.output[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_image", "input_file"):
            raise invalid_request(f"'{part_where}' is an {kind} part, but a function call's output reaches the Dify "
                                  "app as text only (Dify takes images and files with user messages): send it in a "
                                  "user message instead.", param=part_where, code="unsupported_value")
        texts.append(_part(part, part_where)["text"])
    return "\n".join(texts)


def _tools(body: dict[str, Any]) -> tuple[ToolRequest | None, dict[str, tuple[str, str]]]:
    """The offered functions, and the namespace of each one that has one (by offered name)."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid_request("'tools' must be an array.", param="tools", code="invalid_type")
    declared: list[tuple[str | None, ToolSpec]] = []  # (namespace, function)
    for index, tool in enumerate(tools or []):
        _add_tools(declared, tool, f"tools[{index}]", None)
    specs, namespaced = _offered(declared)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in HOSTED_TOOLS:
        raise invalid_request(f"'tool_choice' requires the {choice['type']} tool, which a Dify app cannot run: only "
                              "function tools are offered.", param="tool_choice", code="unsupported_tool")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed, choice = allowed_tools(choice, "tool_choice", specs, _allowed(specs, namespaced))
        specs = list(allowed)
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        choice = {"type": "function", "name": _chosen(choice, "tool_choice", specs, namespaced)}
    request = tool_request(tuple(specs), choice, "tool_choice", body.get("parallel_tool_calls") is not False)
    return request, namespaced


def _add_tools(declared: list[tuple[str | None, ToolSpec]], tool: Any, where: str, namespace: str | None) -> None:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind == "function":
        declared.append((namespace, read_function(tool, where)))
    elif kind == "namespace" and namespace is None:  # a group of functions, each offered like any other
        name, members = tool.get("name"), tool.get("tools")
        if not isinstance(members, list):
            raise invalid_request(f"'{where}.tools' must be an array of tools.", param=f"{where}.tools",
                                  code="invalid_type")
        if not isinstance(name, str) or not _NAMESPACE_NAME.fullmatch(name):
            raise invalid_request(f"'{where}.name' must be 1 to 64 letters, digits, underscores or dashes.",
                                  param=f"{where}.name", code="invalid_value")
        for index, member in enumerate(members):
            _add_tools(declared, member, f"{where}.tools[{index}]", name)
    elif kind == "namespace":
        raise invalid_request(f"'{where}': a namespace cannot hold another namespace.", param=f"{where}.type",
                              code="invalid_value")
    elif kind not in HOSTED_TOOLS:
        raise invalid_request(f"'{where}.type' must be function, namespace or a hosted tool type (got {kind!r}).",
                              param=f"{where}.type", code="invalid_value")


def _offered(declared: list[tuple[str | None, ToolSpec]]) -> tuple[list[ToolSpec], dict[str, tuple[str, str]]]:
    """The functions as the model is offered them: a function of a namespace whose name another
    function has too is offered as `<namespace>.<name>` (a function's own name has no dot)."""
    seen: set[tuple[str | None, str]] = set()
    for namespace, spec in declared:
        if (namespace, spec.name) in seen:
            label = spec.name if namespace is None else f"{namespace}.{spec.name}"
            raise invalid_request(f"'tools' declares the function '{label}' twice.", param="tools",
                                  code="invalid_value")
        seen.add((namespace, spec.name))
    counts = Counter(spec.name for _, spec in declared)
    specs: list[ToolSpec] = []
    namespaced: dict[str, tuple[str, str]] = {}
    for namespace, spec in declared:
        if namespace is not None:
            offered = spec.name if counts[spec.name] == 1 else f"{namespace}.{spec.name}"
            namespaced[offered] = (namespace, spec.name)
            spec = replace(spec, name=offered)
        specs.append(spec)
    return specs, namespaced


def _allowed(specs: list[ToolSpec],
             namespaced: dict[str, tuple[str, str]]) -> Callable[[dict[str, Any], str], set[str]]:
    """What one entry of an allowed_tools choice allows (core/request/tools.py `allowed_tools`):
    a function (by its own name, with its namespace when several have it), or a namespace's
    functions."""

    def allows(entry: dict[str, Any], where: str) -> set[str]:
        if not isinstance(entry.get("name"), str):
            raise invalid_request(f"'{where}.name' must be a string.", param=f"{where}.name", code="invalid_type")
        if entry.get("type", "function") == "namespace":
            return {name for name, (namespace, _) in namespaced.items() if namespace == entry["name"]}
        return {_chosen(entry, where, specs, namespaced)}

    return allows


def _chosen(entry: dict[str, Any], where: str, specs: list[ToolSpec], namespaced: dict[str, tuple[str, str]]) -> str:
    """The offered name of the function a tool choice names (by its own name, and its
    namespace when it has one); its name as given when no function matches."""
    name, namespace = entry["name"], entry.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise invalid_request(f"'{where}.namespace' must be a string.", param=f"{where}.namespace",
                              code="invalid_type")
    if namespace is None and any(spec.name == name for spec in specs):
        return name
    matches = [offered for offered, (group, own) in namespaced.items()
               if own == name and (namespace is None or group == namespace)]
    return matches[0] if len(matches) == 1 else name


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
    if not isinstance(previous_response_id, str):
        raise invalid_request("'previous_response_id' must be a string.", param="previous_response_id",
                              code="invalid_type")
    continued = continued_ids(previous_response_id)
    if continued is None:
        raise OpenAIError(404, f"Previous response with id {previous_response_id!r} not found: OpenDify stores no "
                               "responses, and only the ids of responses of Dify chat apps name a conversation to "
                               "continue.", param="previous_response_id", code="previous_response_not_found")
    return continued
