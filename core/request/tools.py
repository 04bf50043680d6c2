"""Function calling for Dify apps, which cannot take OpenAI `tools` (README, "Function calling").

The gateway reads the offered functions from the request (`parse_tool_request`), describes
them in the query text (`tool_instructions`) and shows earlier calls and results to the model
in the syntax it is asked to write (`render_tool_call_turn`, `render_tool_result_turn`);
`core/response/tool_parser.py` turns the answer back into calls. Pure: data in, data out.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import invalid_request
from core.request.content import content_text
from core.tolerant_json import compact

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"

_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_CHOICES = ("auto", "none", "required")
# tool_choice {"type": "allowed_tools"}: the modes OpenAI takes.
ALLOWED_MODES = ("auto", "required")


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """One callable function as the client declared it."""

    name: str
    description: str
    parameters: dict  # JSON schema, possibly {}


@dataclass(frozen=True)
class ToolRequest:
    """What the OpenAI request asked for, after `tool_choice` filtering."""

    tools: tuple[ToolSpec, ...]
    choice: str  # "auto" | "required" | "named" ("none" never gets here)
    forced_name: str | None  # the function a "named" choice forces
    legacy: bool  # the request used `functions`: answer with `function_call`
    parallel: bool = True  # False for `parallel_tool_calls: false` and for legacy `functions`

    def tool(self, name: str) -> ToolSpec | None:
        return next((tool for tool in self.tools if tool.name == name), None)


def parse_tool_request(body: dict) -> ToolRequest | None:
    """The tools a chat request offers, or None when it offers none (or `tool_choice` is "none").

    `tools` wins over legacy `functions` when a client sends both. Explicit nulls count as
    absent (docs/clients.md rule 8). A `tool_choice` of type allowed_tools offers the tools it
    names, with its mode (auto or required) as the choice.
    """
    if body.get("tools") is None and body.get("functions") is not None:
        tools = _parse_tools(body["functions"], "functions", read_function)
        # `function_call` holds a single call
        return tool_request(tools, body.get("function_call"), "function_call", parallel=False, legacy=True)
    tools = _parse_tools(body["tools"], "tools", _read_tool) if body.get("tools") is not None else ()
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        settings = choice.get("allowed_tools")
        if not isinstance(settings, dict):
            raise invalid_request("'tool_choice.allowed_tools' must be an object with 'mode' and 'tools'.",
                                  param="tool_choice.allowed_tools", code="invalid_type")
        tools, choice = allowed_tools(settings, "tool_choice.allowed_tools", tools, _allowed_function)
    if body.get("tools") is not None:
        return tool_request(tools, choice, "tool_choice", body.get("parallel_tool_calls") is not False)
    # A choice without tools: "required" or a named function cannot be honoured.
    _parse_choice(choice, "tool_choice", ())
    _parse_choice(body.get("function_call"), "function_call", ())
    return None


def tool_request(tools: tuple[ToolSpec, ...], choice_value: Any, param: str, parallel: bool,
                 legacy: bool = False) -> ToolRequest | None:
    """The request for `tools` under the choice `choice_value` (a `tool_choice` in any of its
    shapes; `param` names it in errors); None when nothing is offered."""
    choice, forced_name = _parse_choice(choice_value, param, tools)
    if choice == "none" or not tools:
        return None
    if choice == "named":
        tools = tuple(tool for tool in tools if tool.name == forced_name)
    return ToolRequest(tools=tools, choice=choice, forced_name=forced_name, legacy=legacy, parallel=parallel)


def allowed_tools(settings: dict[str, Any], where: str, tools: Iterable[ToolSpec],
                  allows: Callable[[dict[str, Any], str], Iterable[str]]) -> tuple[tuple[ToolSpec, ...], str]:
    """A `tool_choice` of type allowed_tools, `{"mode": "auto" | "required", "tools": [...]}`
    (at `where`): the offered `tools` it allows, and its mode, the choice among them.
    `allows(entry, where)` names the offered functions one entry of its `tools` allows (chat
    completions and the Responses API write them differently); entries of other tool types
    (hosted tools, which are never offered) allow nothing."""
    mode = settings.get("mode", "auto")
    if mode not in ALLOWED_MODES:
        raise invalid_request(f"'{where}.mode' must be one of {', '.join(ALLOWED_MODES)}.", param=f"{where}.mode",
                              code="invalid_value")
    entries = settings.get("tools")
    if not isinstance(entries, list):
        raise invalid_request(f"'{where}.tools' must be an array of tools.", param=f"{where}.tools",
                              code="invalid_type")
    allowed: set[str] = set()
    for index, entry in enumerate(entries):
        entry_where = f"{where}.tools[{index}]"
        if not isinstance(entry, dict):
            raise invalid_request(f"'{entry_where}' must be an object.", param=entry_where, code="invalid_type")
        if entry.get("type", "function") in ("function", "namespace"):
            allowed.update(allows(entry, entry_where))
    return tuple(tool for tool in tools if tool.name in allowed), mode


def _allowed_function(entry: dict[str, Any], where: str) -> tuple[str, ...]:
    """The function a chat completions allowed_tools entry names: `{"type": "function",
    "function": {"name": ...}}` (or `{"type": "function", "name": ...}`)."""
    if entry.get("type", "function") != "function":
        return ()  # namespaces are Responses API tools
    function = entry.get("function") if isinstance(entry.get("function"), dict) else entry
    if not isinstance(function.get("name"), str):
        raise invalid_request(f"'{where}.function.name' must be a string.", param=f"{where}.function.name",
                              code="invalid_type")
    return (function["name"],)


def _parse_tools(value: Any, param: str, read: Callable[[Any, str], ToolSpec]) -> tuple[ToolSpec, ...]:
    if not isinstance(value, list):
        raise invalid_request(f"'{param}' must be an array.", param=param, code="invalid_type")
    specs: list[ToolSpec] = []
    for index, item in enumerate(value):
        spec = read(item, f"{param}[{index}]")
        if any(known.name == spec.name for known in specs):
            # A named tool_choice and the parsed calls would be ambiguous.
            raise invalid_request(f"'{param}' declares the function '{spec.name}' twice.", param=param,
                                  code="invalid_value")
        specs.append(spec)
    return tuple(specs)


def _read_tool(item: Any, where: str) -> ToolSpec:
    """One `tools` entry: `{"type": "function", "function": {...}}`."""
    if not isinstance(item, dict):
        raise invalid_request(f"'{where}' must be an object.", param=where, code="invalid_type")
    kind = item.get("type")
    if kind is not None and kind != "function":
        raise invalid_request(f"'{where}.type' must be 'function': only function tools are supported.",
                              param=f"{where}.type", code="invalid_value")
    function = item.get("function")
    if not isinstance(function, dict):
        raise invalid_request(f"'{where}.function' must be an object with a 'name'.", param=f"{where}.function",
                              code="missing_required_parameter")
    return read_function(function, f"{where}.function")


def read_function(function: Any, where: str) -> ToolSpec:
    """A function definition: a `tools[].function` or a legacy `functions` entry."""
    if not isinstance(function, dict):
        raise invalid_request(f"'{where}' must be an object.", param=where, code="invalid_type")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"'{where}.name' is required.", param=f"{where}.name",
                              code="missing_required_parameter")
    if not _NAME_RE.fullmatch(name):
        raise invalid_request(f"Invalid '{where}.name': {json.dumps(name)} must be 1 to 64 letters, digits, "
                              "underscores or dashes.", param=f"{where}.name", code="invalid_value")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid_request(f"'{where}.description' must be a string.", param=f"{where}.description",
                              code="invalid_type")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid_request(f"'{where}.parameters' must be a JSON schema object.", param=f"{where}.parameters",
                              code="invalid_type")
    return ToolSpec(name=name, description=description or "", parameters=parameters or {})


def _parse_choice(value: Any, param: str, tools: tuple[ToolSpec, ...]) -> tuple[str, str | None]:
    """(choice, forced name) from `tool_choice` or legacy `function_call`; absent means "auto"."""
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in _CHOICES:
            raise invalid_request(f"Invalid '{param}': {json.dumps(value)}; expected 'auto', 'none', 'required' "
                                  "or a function.", param=param, code="invalid_value")
        if value == "required" and not tools:
            raise invalid_request(f"'{param}' is 'required' but no function is declared.", param=param,
                                  code="invalid_value")
        return value, None
    if not isinstance(value, dict):
        raise invalid_request(f"'{param}' must be a string or an object.", param=param, code="invalid_type")
    # {"type": "function", "function": {"name": ...}}, or legacy {"name": ...}.
    function = value.get("function") if isinstance(value.get("function"), dict) else value
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise invalid_request(f"'{param}' must name a function.", param=param, code="missing_required_parameter")
    if not any(tool.name == name for tool in tools):
        raise invalid_request(f"Invalid '{param}': the function '{name}' is not declared.", param=param,
                              code="invalid_value")
    return "named", name


# --- instructions and earlier turns ------------------------------------------------------------

_CALL_FORMAT = (
    "For each function call, write a JSON object with the function name and arguments inside "
    "<tool_call></tool_call> tags:\n"
    f"{OPEN_TAG}\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n'
    f"{CLOSE_TAG}"
)
_SEVERAL = "To make several calls, write one block per call."
_AT_MOST_ONE = "Make at most one call per answer."
_RESULTS = "Results come back in a later message inside <tool_result> tags; never write them yourself."
_AUTO = "Call a function only when it helps; otherwise answer normally, without any <tool_call> block."
_REQUIRED = "You must call at least one function in this answer."

# Keys of a schema node whose values are schemas (or maps/lists of schemas), for trimming.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_NOISE = ("title", "$schema")  # pydantic puts a title on every property: tokens, no meaning


def tool_instructions(request: ToolRequest) -> str:
    """Instructions appended to the query: the functions, the call syntax, the choice rule."""
    lines = ["# Tools", "", "You can call these functions (`?`: optional parameter):"]
    for tool in request.tools:
        lines.extend(_describe_tool(tool))
    lines += ["", _CALL_FORMAT, _SEVERAL if request.parallel else _AT_MOST_ONE, _RESULTS, _choice_rule(request)]
    return "\n".join(lines)


def _choice_rule(request: ToolRequest) -> str:
    if request.choice == "named":
        return f"You must call the function {request.forced_name} in this answer."
    return _REQUIRED if request.choice == "required" else _AUTO


def _describe_tool(tool: ToolSpec) -> list[str]:
    """One function as a signature, `- name(city: string, days?: integer = 1): description`,
    then a line with what each parameter means.

    Far shorter than the JSON schema (front ends such as Open WebUI attach dozens of tools to
    every turn, and the app pays for every character), and it says the same: `?` marks an
    optional parameter, a type the schema's JSON type (`string[]` an array of strings, `a | b`
    a choice of types or values), `= value` the default; constraints a type cannot say
    (bounds, patterns, nested objects) follow it as minified JSON schema.
    """
    description = " ".join(tool.description.split())
    schema = _trim_schema(tool.parameters)
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    extra = {key: value for key, value in schema.items() if key not in _OBJECT_KEYS}
    signature = ", ".join(_parameter(name, spec, name in required) for name, spec in properties.items())
    head = f"- {tool.name}({signature})"
    lines = [f"{head}: {description}" if description else head]
    notes = [f"{name}: {' '.join(spec['description'].split())}" for name, spec in properties.items()
             if isinstance(spec, dict) and isinstance(spec.get("description"), str) and spec["description"].strip()]
    if notes:
        lines.append("  " + "; ".join(notes))
    if extra:  # definitions the parameters refer to, or a schema that is not a plain object
        lines.append(f"  Arguments schema: {compact(extra)}")
    return lines


# Keys of the arguments' object schema that the signature itself says.
_OBJECT_KEYS = ("type", "properties", "required", "additionalProperties")
# Keys of a parameter's schema that its type text says (or its description line).
_TYPE_KEYS = ("type", "enum", "const", "items", "anyOf", "oneOf", "default", "description")


def _parameter(name: str, spec: Any, required: bool) -> str:
    text = f"{name}{'' if required else '?'}: "
    if not isinstance(spec, dict):
        return text + compact(spec)
    type_text = _type_text(spec)
    if type_text is None:  # more than a type: the schema itself
        text += compact({key: value for key, value in spec.items() if key not in ("description", "default")})
        rest = {}
    else:
        text += type_text
        rest = {key: value for key, value in spec.items() if key not in _TYPE_KEYS}
    if spec.get("default") is not None:
        text += f" = {compact(spec['default'])}"
    return f"{text} {compact(rest)}" if rest else text


def _type_text(spec: dict) -> str | None:
    """A schema's type as a short text: `string`, `integer | null`, `"c" | "f"`, `string[]`;
    None when the schema is more than a type."""
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return " | ".join(compact(value) for value in spec["enum"])
    if "const" in spec:
        return compact(spec["const"])
    kind = spec.get("type")
    choices = spec.get("anyOf") or spec.get("oneOf")
    if kind is None and isinstance(choices, list) and choices and all(map(_is_plain_type, choices)):
        return " | ".join(str(_type_text(choice)) for choice in choices)
    if kind == "array":
        return f"{_type_text(spec['items'])}[]" if _is_plain_type(spec.get("items")) else None
    if kind == "object":
        return None if "properties" in spec else kind
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list) and kind and all(isinstance(item, str) for item in kind):
        return " | ".join(kind)
    return None


def _is_plain_type(spec: Any) -> bool:
    """A schema that is nothing but a type (or an array of one): its type text says all."""
    if not isinstance(spec, dict) or not spec:
        return False
    if set(spec) <= {"type"} and isinstance(spec.get("type"), str) and spec["type"] != "array":
        return True
    return set(spec) <= {"type", "items"} and spec.get("type") == "array" and _is_plain_type(spec.get("items"))


def _trim_schema(node: Any) -> Any:
    """A schema without annotation keys that cost tokens and say nothing to the model."""
    if isinstance(node, list):
        return [_trim_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    trimmed = {}
    for key, value in node.items():
        if key in _SCHEMA_NOISE:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            value = {name: _trim_schema(schema) for name, schema in value.items()}
        elif key in _SCHEMA_VALUES:
            value = _trim_schema(value)
        trimmed[key] = value
    return trimmed


def render_tool_call_turn(message: dict) -> str:
    """An assistant turn that called functions, as the model would have written it."""
    parts = []
    text = content_text(message.get("content"))
    if text.strip():
        parts.append(text)
    parts.extend(_call_block(name, arguments) for name, arguments in _message_calls(message))
    return "\n".join(parts)


def _message_calls(message: dict) -> list[tuple[Any, Any]]:
    """(name, arguments) of each call in `tool_calls` and legacy `function_call`."""
    calls = []
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            calls.append((function.get("name"), function.get("arguments")))
    function_call = message.get("function_call")
    if isinstance(function_call, dict):
        calls.append((function_call.get("name"), function_call.get("arguments")))
    return calls


def _call_block(name: Any, arguments: Any) -> str:
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    elif isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # otherwise shown as the string the client sent
            arguments = json.loads(arguments)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{body}\n{CLOSE_TAG}"


def render_tool_result_turn(message: dict, names: Mapping[str, str] | None = None) -> str:
    """A `tool` (tool_call_id, content) or legacy `function` (name, content) message as text.

    OpenAI `tool` messages need not carry the function's name; `names` (see `call_names`)
    supplies it from the assistant turn that made the call.
    """
    call_id = message.get("tool_call_id")
    name = message.get("name")
    if not name and names and isinstance(call_id, str):
        name = names.get(call_id)
    attributes = "".join(f' {key}="{html.escape(value)}"' for key, value in (("name", name), ("id", call_id))
                         if isinstance(value, str) and value)
    return f"<tool_result{attributes}>\n{content_text(message.get('content'))}\n</tool_result>"


def call_names(messages: Iterable[dict]) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant turns of a conversation."""
    names = {}
    for message in messages:
        tool_calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in tool_calls if isinstance(tool_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call.get("id"), str) and isinstance(function.get("name"), str):
                names[call["id"]] = function["name"]
    return names
