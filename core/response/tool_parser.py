"""The app's answer -> OpenAI tool calls, while it streams.

`ToolCallParser` splits the answer into text and calls, holding back only what may still
become a call. It accepts the shapes models actually write (a `<tool_call>` block, a fenced
json block, the OpenAI `tool_calls` shape, a legacy `function_call`), repairs small JSON
slips, and never turns a call to a function that was not offered into a tool call.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

from core.items import TEXT, TOOL_CALL, Item
from core.request.tools import CLOSE_TAG, FENCE, OPEN_TAG, ToolRequest
from core.tolerant_json import InvalidJSON, coerce, compact, loads_tolerant

_ID_ALPHABET = string.ascii_letters + string.digits


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
    except InvalidJSON:
        return None
    calls = []
    for name, raw_arguments in raw_calls or ():
        tool = request.tool(name) if isinstance(name, str) else None
        arguments = _arguments(raw_arguments, tool.parameters) if tool else None
        if arguments is None:
            return None
        calls.append(ToolCall(id=new_call_id(), name=tool.name, arguments=compact(arguments)))
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
        except InvalidJSON:
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

    def feed(self, text: str) -> list[Item]:
        self._buffer += text
        items: list[Item] = []
        while self._step(items):
            pass
        return _merge_text(items)

    def release(self) -> list[Item]:
        """The answer broke off (an upstream error): whatever is held goes out as text, never
        as a call whose arguments the model may not have finished."""
        held = self._opener + self._buffer if self._state != _IN_TEXT else self._buffer
        self._buffer, self._state, self._opener, self._scan_from = "", _IN_TEXT, "", 0
        return [(TEXT, held)] if held else []

    def flush(self) -> list[Item]:
        """The end of the answer: a held block is a call if it parses (even unclosed), else text."""
        items: list[Item] = []
        body = self._buffer
        if self._state == _IN_TEXT:
            items.append((TEXT, body))
        else:
            end_marker = CLOSE_TAG if self._state == _IN_TAG else FENCE
            self._add_block(items, _without_partial_end(body, end_marker), self._opener + body)
        self._buffer, self._state, self._opener, self._scan_from = "", _IN_TEXT, "", 0
        return _merge_text(items)

    def _step(self, items: list[Item]) -> bool:
        """Consume what can be decided; False when the rest must wait for more text."""
        if self._state == _IN_TAG:
            return self._scan_tag(items)
        if self._state == _IN_FENCE:
            return self._scan_fence(items)
        return self._scan_text(items)

    def _scan_text(self, items: list[Item]) -> bool:
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

    def _scan_tag(self, items: list[Item]) -> bool:
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

    def _scan_fence(self, items: list[Item]) -> bool:
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

    def _add_block(self, items: list[Item], body: str, original: str) -> None:
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


def _merge_text(items: list[Item]) -> list[Item]:
    """Adjacent text items joined, empty ones dropped: one delta per batch instead of many."""
    merged: list[Item] = []
    for kind, value in items:
        if kind != TEXT:
            merged.append((kind, value))
        elif value and merged and merged[-1][0] == TEXT:
            merged[-1] = (TEXT, merged[-1][1] + value)
        elif value:
            merged.append((TEXT, value))
    return merged
