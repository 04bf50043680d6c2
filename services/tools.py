"""Function calling for Dify apps, which cannot take OpenAI `tools` (DESIGN.md section 6).

The gateway describes the offered functions in the query text (`tool_instructions`), shows
earlier calls and results to the model in the syntax it is asked to write
(`render_tool_call_turn`, `render_tool_result_turn`), and turns the answer back into OpenAI
tool calls while it streams (`ToolCallParser`). Models slip, so the parser is tolerant: it
accepts the shapes models actually write (a `<tool_call>` block, a fenced json block, the
OpenAI `tool_calls` shape) and repairs small JSON mistakes, but it never turns a call to an
unknown function into a tool call. Pure: data in, data out.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
import secrets
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.content import content_text
from services.errors import invalid_request
from services.translate import TEXT

TOOL_CALL = "tool_call"  # item kind; value: a ToolCall

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
FENCE = "```"

_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_CHOICES = ("auto", "none", "required")
_ID_ALPHABET = string.ascii_letters + string.digits


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
    absent (clients.md rule 8).
    """
    if body.get("tools") is not None:
        tools = _parse_tools(body["tools"], "tools", _read_tool)
        choice, forced_name = _parse_choice(body.get("tool_choice"), "tool_choice", tools)
        legacy, parallel = False, body.get("parallel_tool_calls") is not False
    elif body.get("functions") is not None:
        tools = _parse_tools(body["functions"], "functions", _read_function)
        choice, forced_name = _parse_choice(body.get("function_call"), "function_call", tools)
        legacy, parallel = True, False  # `function_call` holds a single call
    else:  # a choice without tools: "required" or a named function cannot be honoured
        _parse_choice(body.get("tool_choice"), "tool_choice", ())
        _parse_choice(body.get("function_call"), "function_call", ())
        return None
    if choice == "none" or not tools:
        return None
    if choice == "named":
        tools = tuple(tool for tool in tools if tool.name == forced_name)
    return ToolRequest(tools=tools, choice=choice, forced_name=forced_name, legacy=legacy, parallel=parallel)


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
    return _read_function(function, f"{where}.function")


def _read_function(function: Any, where: str) -> ToolSpec:
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
    lines = ["# Tools", "", "You can call these functions:"]
    for tool in request.tools:
        lines.extend(_describe_tool(tool))
    lines += ["", _CALL_FORMAT, _SEVERAL if request.parallel else _AT_MOST_ONE, _RESULTS, _choice_rule(request)]
    return "\n".join(lines)


def _choice_rule(request: ToolRequest) -> str:
    if request.choice == "named":
        return f"You must call the function {request.forced_name} in this answer."
    return _REQUIRED if request.choice == "required" else _AUTO


def _describe_tool(tool: ToolSpec) -> list[str]:
    description = " ".join(tool.description.split())
    lines = [f"- {tool.name}: {description}" if description else f"- {tool.name}"]
    schema = _trim_schema(tool.parameters)
    if not _has_parameters(schema):
        lines.append('  Parameters: none (use "arguments": {})')
        return lines
    required = schema.pop("required", None)
    lines.append(f"  Parameters (JSON schema): {_compact(schema)}")
    if isinstance(required, list) and required:
        lines.append(f"  Required: {', '.join(str(name) for name in required)}")
    return lines


def _has_parameters(schema: dict) -> bool:
    ignored = ("type", "properties", "required", "additionalProperties")
    return any(key not in ignored for key in schema) or bool(schema.get("properties"))


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


# --- tolerant JSON ---------------------------------------------------------------------------


class _Invalid(Exception):
    """Text that is not JSON even after the small repairs."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity would make the arguments string invalid JSON


# strict=False: models put raw newlines inside strings (code arguments, multi-line text).
_DECODER = json.JSONDecoder(strict=False, parse_constant=_reject_constant)
_WORD_RE = re.compile(r"\w+")
_PYTHON_WORDS = {"True": "true", "False": "false", "None": "null"}
_CLOSERS = {"{": "}", "[": "]"}


def loads_tolerant(text: str) -> Any:
    """Parse JSON, repairing the slips models make; raises `_Invalid` when that is not enough."""
    text = text.strip()
    try:
        return _decode(text)
    except _Invalid:
        return _decode(_repair(text))


def _decode(text: str) -> Any:
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError) as error:
        raise _Invalid(str(error)) from None
    if text[end:].strip(" \t\r\n}]"):  # one closing brace too many is a slip; more text is not
        raise _Invalid("text after the JSON value")
    return value


def _repair(text: str) -> str:
    """Fix trailing commas, Python words, single quotes and missing closers at the end."""
    out: list[str] = []
    open_brackets: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char in "\"'":
            end = _string_end(text, index)
            out.append(text[index:end] if char == '"' else _requote(text[index + 1:end - 1]))
            index = end
            continue
        if char in "{[":
            open_brackets.append(_CLOSERS[char])
        elif char in "}]":
            _drop_trailing_comma(out)
            if open_brackets and open_brackets.pop() != char:
                raise _Invalid("mismatched bracket")
        elif char.isalpha() or char == "_":
            word = _WORD_RE.match(text, index).group()
            out.append(_PYTHON_WORDS.get(word, word))
            index += len(word)
            continue
        out.append(char)
        index += 1
    _drop_trailing_comma(out)
    out.extend(reversed(open_brackets))
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """The index after the quote closing the string opened at `start`."""
    quote = text[start]
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
        elif text[index] == quote:
            return index + 1
        else:
            index += 1
    raise _Invalid("unterminated string")  # closing it would guess the rest of the value


def _requote(inner: str) -> str:
    """A single-quoted string's content as a JSON string."""
    chars = []
    index = 0
    while index < len(inner):
        char = inner[index]
        if char == "\\" and index + 1 < len(inner):
            escaped = inner[index + 1]
            chars.append("'" if escaped == "'" else char + escaped)
            index += 2
            continue
        chars.append('\\"' if char == '"' else char)
        index += 1
    return '"' + "".join(chars) + '"'


def _drop_trailing_comma(out: list[str]) -> None:
    index = len(out) - 1
    while index >= 0 and out[index].isspace():
        index -= 1
    if index >= 0 and out[index] == ",":
        del out[index]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- coercion to the schema --------------------------------------------------------------------

_INTEGER_RE = re.compile(r"-?\d+")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_TYPE_CHECKS = {
    "string": lambda value: isinstance(value, str),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, (int, float)) and not isinstance(value, bool),
    "boolean": lambda value: isinstance(value, bool),
    "array": lambda value: isinstance(value, list),
    "object": lambda value: isinstance(value, dict),
    "null": lambda value: value is None,
}


def coerce(value: Any, schema: Any) -> Any:
    """`value` converted to what `schema` asks for where the conversion is unambiguous."""
    if not isinstance(schema, dict):
        return value
    kind = _schema_type(schema, value)
    if kind == "object":
        return _to_object(value, schema)
    if kind == "array":
        return _to_array(value, schema)
    if kind == "integer":
        return _to_integer(value)
    if kind == "number":
        return _to_number(value)
    if kind == "boolean":
        return _to_boolean(value)
    if kind == "string":
        return _to_string(value)
    return value


def _schema_type(schema: dict, value: Any) -> str | None:
    """The one type `value` should have; None when the schema leaves a choice."""
    kind = schema.get("type")
    if kind is None and isinstance(schema.get("properties"), dict):
        return "object"
    if isinstance(kind, list):
        matching = [name for name in kind if name in _TYPE_CHECKS and _TYPE_CHECKS[name](value)]
        if matching:
            return matching[0]
        candidates = [name for name in kind if name != "null"]
        return candidates[0] if len(candidates) == 1 and value is not None else None
    return kind if isinstance(kind, str) else None


def _to_object(value: Any, schema: dict) -> Any:
    if isinstance(value, str) and value.strip().startswith("{"):
        value = _json_or(value, value)
    if not isinstance(value, dict):
        return value
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    extra = schema.get("additionalProperties")
    return {key: coerce(item, properties.get(key, extra)) for key, item in value.items()}


def _to_array(value: Any, schema: dict) -> Any:
    if isinstance(value, str) and value.strip().startswith("["):
        value = _json_or(value, value)
    if value is not None and not isinstance(value, (list, dict)):
        value = [value]
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return [coerce(item, items) for item in value]
    return value


def _json_or(text: str, default: Any) -> Any:
    try:
        return loads_tolerant(text)
    except _Invalid:
        return default


def _to_integer(value: Any) -> Any:
    if isinstance(value, str) and _INTEGER_RE.fullmatch(value.strip()):
        try:
            return int(value.strip())
        except ValueError:  # more digits than Python converts
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _to_number(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        number = _to_integer(value)
        if isinstance(number, int):
            return number
        number = float(value.strip())
        return number if math.isfinite(number) else value
    return value


def _to_boolean(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return value


def _to_string(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _compact(value)
    return value


# --- parsing the answer ------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    """One parsed call, ready for `tool_calls` (or legacy `function_call`)."""

    id: str  # "call_" + 24 random alphanumerics
    name: str
    arguments: str  # compact JSON object


def new_call_id() -> str:
    # One read of the OS generator: a seeded PRNG would repeat ids across forked workers.
    return "call_" + "".join(_ID_ALPHABET[byte % len(_ID_ALPHABET)] for byte in secrets.token_bytes(24))


def parse_calls(text: str, request: ToolRequest) -> list[ToolCall] | None:
    """The calls one block holds, or None when it is not a valid call to an offered function.

    Accepted shapes: {"name", "arguments"|"parameters"|"args"}, {"tool_calls": [...]} (OpenAI),
    {"function_call": {...}}, a single OpenAI tool call {"function": {...}}, or a list of these.
    """
    text = text.strip()
    if text.startswith(OPEN_TAG) and text.endswith(CLOSE_TAG):  # a tag inside a json fence
        text = text[len(OPEN_TAG):-len(CLOSE_TAG)]
    try:
        raw_calls = _raw_calls(loads_tolerant(text))
    except _Invalid:
        return None
    calls = []
    for name, raw_arguments in raw_calls or ():
        tool = request.tool(name) if isinstance(name, str) else None
        arguments = _arguments(raw_arguments, tool.parameters) if tool else None
        if arguments is None:
            return None
        calls.append(ToolCall(id=new_call_id(), name=tool.name, arguments=_compact(arguments)))
    return calls or None


def _raw_calls(value: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(value, list):
        calls = [_raw_call(item) for item in value]
        return None if None in calls else calls
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        return _raw_calls(value["tool_calls"])
    call = _raw_call(value)
    return None if call is None else [call]


def _raw_call(value: Any) -> tuple[Any, Any] | None:
    """(name, raw arguments) of one call object, or None."""
    if not isinstance(value, dict):
        return None
    for wrapper in ("function_call", "function"):  # {"function_call": {...}}, {"type": "function", "function": {...}}
        if isinstance(value.get(wrapper), dict):
            value = value[wrapper]
            break
    if "name" not in value:
        return None
    arguments = next((value[key] for key in ("arguments", "parameters", "args") if key in value), None)
    return value["name"], arguments


def _arguments(raw: Any, schema: dict) -> dict | None:
    """Arguments as an object coerced to the schema; None when they are not an object."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            raw = loads_tolerant(raw)
        except _Invalid:
            return None
    if not isinstance(raw, dict):
        return None
    coerced = coerce(raw, schema)
    return coerced if isinstance(coerced, dict) else raw


_IN_TEXT, _IN_TAG, _IN_FENCE = "text", "tag", "fence"
_MARKER_RE = re.compile(re.escape(OPEN_TAG) + "|" + FENCE)
_TAG_END_RE = re.compile(re.escape(CLOSE_TAG) + "|" + re.escape(OPEN_TAG))
_FENCE_LABELS = ("json", "jsonc", "json5", "tool_call", "tool_calls")
_PLAIN = -1  # a fence that cannot hold a call


class ToolCallParser:
    """Splits a streamed answer into text and tool calls, holding back only what may be a call.

    Held back: a possible `<tool_call>` or fence prefix at the end ("<to", "``"), a started
    `<tool_call>` block until `</tool_call>`, a fence labelled json (or opening on `{`/`[`)
    until its closing fence. Everything else is returned by the `feed` that received it.
    """

    def __init__(self, request: ToolRequest) -> None:
        self.request = request
        self.calls: list[ToolCall] = []
        self._buffer = ""
        self._state = _IN_TEXT
        self._opener = ""  # the text that opened the held block, returned with it if it is no call
        self._scan_from = 0  # where to look for the block's end: earlier text was searched already

    def feed(self, text: str) -> list[tuple[str, Any]]:
        self._buffer += text
        items: list[tuple[str, Any]] = []
        while self._step(items):
            pass
        return _merge_text(items)

    def release(self) -> list[tuple[str, Any]]:
        """The answer broke off (an upstream error): whatever is held goes out as text, never
        as a call whose arguments the model may not have finished."""
        held = self._opener + self._buffer if self._state != _IN_TEXT else self._buffer
        self._buffer, self._state, self._opener, self._scan_from = "", _IN_TEXT, "", 0
        return [(TEXT, held)] if held else []

    def flush(self) -> list[tuple[str, Any]]:
        """The end of the answer: a held block is a call if it parses (even unclosed), else text."""
        items: list[tuple[str, Any]] = []
        body = self._buffer
        if self._state == _IN_TEXT:
            items.append((TEXT, body))
        else:
            end_marker = CLOSE_TAG if self._state == _IN_TAG else FENCE
            self._add_block(items, _without_partial_end(body, end_marker), self._opener + body)
        self._buffer, self._state, self._opener, self._scan_from = "", _IN_TEXT, "", 0
        return _merge_text(items)

    def _step(self, items: list[tuple[str, Any]]) -> bool:
        """Consume what can be decided; False when the rest must wait for more text."""
        if self._state == _IN_TAG:
            return self._scan_tag(items)
        if self._state == _IN_FENCE:
            return self._scan_fence(items)
        return self._scan_text(items)

    def _scan_text(self, items: list[tuple[str, Any]]) -> bool:
        buffer = self._buffer
        match = _MARKER_RE.search(buffer)
        if match is None:
            keep = len(buffer) - _held_suffix_length(buffer)
            items.append((TEXT, buffer[:keep]))
            self._buffer = buffer[keep:]
            return False
        start = match.start()
        if match.group() == OPEN_TAG:
            items.append((TEXT, buffer[:start]))
            self._open(_IN_TAG, OPEN_TAG, buffer[match.end():])
            return True
        body_start = _fence_body_start(buffer, match.end())
        if body_start is None:
            items.append((TEXT, buffer[:start]))
            self._buffer = buffer[start:]
            return False
        if body_start == _PLAIN:
            items.append((TEXT, buffer[:match.end()]))
            self._buffer = buffer[match.end():]
            return True
        items.append((TEXT, buffer[:start]))
        self._open(_IN_FENCE, buffer[start:body_start], buffer[body_start:])
        return True

    def _scan_tag(self, items: list[tuple[str, Any]]) -> bool:
        match = _TAG_END_RE.search(self._buffer, self._scan_from)
        if match is None:
            self._scan_from = max(0, len(self._buffer) - len(CLOSE_TAG) + 1)
            return False
        body = self._buffer[:match.start()]
        rest = self._buffer[match.end():]
        if match.group() == CLOSE_TAG:
            self._add_block(items, body, OPEN_TAG + body + CLOSE_TAG)
            self._buffer, self._state = rest, _IN_TEXT
        else:  # a new <tool_call> before </tool_call>: the model forgot to close the first block
            self._add_block(items, body, OPEN_TAG + body)
            self._open(_IN_TAG, OPEN_TAG, rest)
        return True

    def _scan_fence(self, items: list[tuple[str, Any]]) -> bool:
        end = self._buffer.find(FENCE, self._scan_from)
        if end < 0:
            self._scan_from = max(0, len(self._buffer) - len(FENCE) + 1)
            return False
        body = self._buffer[:end]
        self._add_block(items, body, self._opener + body + FENCE)
        self._buffer, self._state = self._buffer[end + len(FENCE):], _IN_TEXT
        return True

    def _open(self, state: str, opener: str, rest: str) -> None:
        self._state, self._opener, self._buffer, self._scan_from = state, opener, rest, 0

    def _add_block(self, items: list[tuple[str, Any]], body: str, original: str) -> None:
        calls = parse_calls(body, self.request)
        if calls is None:
            items.append((TEXT, original))
            return
        if not self.request.parallel:
            calls = [] if self.calls else calls[:1]  # at most one call in the whole answer
        self.calls.extend(calls)
        items.extend((TOOL_CALL, call) for call in calls)


def _held_suffix_length(text: str) -> int:
    """Length of the end of `text` that may still become `<tool_call>` or a fence."""
    for size in range(min(len(text), len(OPEN_TAG) - 1), 0, -1):
        suffix = text[-size:]
        if OPEN_TAG.startswith(suffix) or FENCE.startswith(suffix):
            return size
    return 0


def _fence_body_start(buffer: str, after: int) -> int | None:
    """Where the body of a fence that may hold a call starts, `_PLAIN`, or None if undecided.

    Candidates: ```json (and a few similar labels) on its own line, ``` then a line starting
    with `{` or `[`, and ``` directly followed by `{` or `[`.
    """
    rest = buffer[after:]
    inline = rest.lstrip(" \t")
    if not inline:
        return None
    if inline[0] in "{[":
        return len(buffer) - len(inline)
    newline = rest.find("\n")
    label = (rest if newline < 0 else rest[:newline]).strip().lower()
    if newline < 0:
        if not label:
            return None
        if rest[-1].isspace():  # the label is complete; only spaces may follow it before the newline
            return None if label in _FENCE_LABELS else _PLAIN
        return None if any(name.startswith(label) for name in _FENCE_LABELS) else _PLAIN
    if label in _FENCE_LABELS:
        return after + newline + 1
    if label:
        return _PLAIN
    first_line = rest[newline + 1:].lstrip()
    if not first_line:
        return None
    return after + newline + 1 if first_line[0] in "{[" else _PLAIN


def _without_partial_end(body: str, marker: str) -> str:
    """`body` without a cut-off end marker ("</tool_" or "``") the stream stopped in."""
    stripped = body.rstrip()
    for size in range(min(len(marker) - 1, len(stripped)), 0, -1):
        if stripped.endswith(marker[:size]):
            return stripped[:-size]
    return body


def _merge_text(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Adjacent text items joined, empty ones dropped: one delta per batch instead of many."""
    merged: list[tuple[str, Any]] = []
    for kind, value in items:
        if kind != TEXT:
            merged.append((kind, value))
        elif value and merged and merged[-1][0] == TEXT:
            merged[-1] = (TEXT, merged[-1][1] + value)
        elif value:
            merged.append((TEXT, value))
    return merged
