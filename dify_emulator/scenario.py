"""Scenario directives: `@emulator {json}` inside a query or a string input.

Tests and benchmarks choose the emulator's behaviour through the gateway by
embedding a directive in the user's text. The last directive in the text wins,
it is merged over the app's `default_scenario`, and every directive is removed
from the text that is echoed back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import HTTP_ERROR_NAMES

MARKER = "@emulator "
_DECODER = json.JSONDecoder()
_WORD = re.compile(r"\s*\S+\s*")
_TOOL_RESULT = re.compile(r"(?:^|\n)<tool_result[ >]")  # a result block, not the instructions that name the tag


@dataclass
class Scenario:
    """Effective behaviour for one request; every field is a directive key of the same name."""

    answer: str | None = None
    after_tool_result: str | None = None
    chunks: list[str] | None = None
    tokens: int | None = None
    delay_ms: float = 0.0
    first_delay_ms: float = 0.0
    burst: int = 1
    error_after: int | None = None
    error_code: str = "completion_request_error"
    error_status: int = 400
    error_message: str = "[openai] Error: emulated model failure"
    http_error: str | dict[str, Any] | None = None
    ping_interval_s: float | None = None
    pause_after: int | None = None
    pause_s: float = 0.0
    stall_after: int | None = None
    stall_s: float | None = None
    close_after: int | None = None
    reset_after: int | None = None
    reset_before_headers: bool = False
    never_end: bool = False
    split_utf8: bool = False
    raw_before: list[str] = field(default_factory=list)
    message_replace: str | None = None
    agent_steps: list[dict[str, Any]] | None = None
    workflow_status: str | None = None
    workflow_error: str = "Emulated node failure"
    outputs: dict[str, Any] | None = None
    chatflow_order: str | None = None
    tts: bool | str = False
    usage: dict[str, Any] | None = None
    retriever_resources: list[dict[str, Any]] | None = None
    reasoning: str | None = None
    pause_for_input: dict[str, Any] | None = None
    pre_run_failure: str | None = None
    extra_node_events: bool = False


_INT_KEYS = {
    "tokens",
    "burst",
    "error_after",
    "error_status",
    "pause_after",
    "stall_after",
    "close_after",
    "reset_after",
}
_FLOAT_KEYS = {"delay_ms", "first_delay_ms", "ping_interval_s", "pause_s", "stall_s"}
_BOOL_KEYS = {"reset_before_headers", "never_end", "split_utf8", "extra_node_events"}
_STR_KEYS = {"answer", "after_tool_result", "error_code", "error_message", "message_replace", "workflow_error"}
_STR_KEYS |= {"reasoning", "pre_run_failure"}
#: `tts`: true (audio, then its end marker, after the terminal event), or one of these variants.
TTS_VARIANTS = ("end_only", "interleaved")
#: The keys `pause_for_input` takes (all optional), with their types.
_PAUSE_KEYS = {"node_title": str, "form_content": str, "actions": list, "keep_open": bool}
_KNOWN = {f.name for f in fields(Scenario)}


def extract_directives(text: str) -> tuple[str, dict[str, Any] | None]:
    """Remove every directive from `text`; return the cleaned text and the last directive.

    A directive is `@emulator ` followed by a JSON object on the same line. Text
    that looks like a directive but does not parse is left untouched.
    """
    found: dict[str, Any] | None = None
    pieces: list[str] = []
    pos = 0
    search_from = 0
    while True:
        start = text.find(MARKER, search_from)
        if start < 0:
            break
        brace = start + len(MARKER)
        while brace < len(text) and text[brace] in " \t":
            brace += 1
        parsed, end = _parse_object(text, brace)
        if parsed is None:
            search_from = start + len(MARKER)
            continue
        found = parsed
        pieces.append(text[pos:start])
        pos = search_from = end
    pieces.append(text[pos:])
    return "".join(pieces), found


def _parse_object(text: str, index: int) -> tuple[dict[str, Any] | None, int]:
    if index >= len(text) or text[index] != "{":
        return None, index
    try:
        value, end = _DECODER.raw_decode(text, index)
    except ValueError:
        return None, index
    if not isinstance(value, dict) or "\n" in text[index:end]:
        return None, index
    return value, end


def build_scenario(default: dict[str, Any], directive: dict[str, Any] | None) -> Scenario:
    """Merge a directive over the app default and type-check the values (ValueError on bad ones)."""
    merged = {**default, **(directive or {})}
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in _KNOWN or value is None:
            continue
        values[key] = _coerce(key, value)
    scenario = Scenario(**values)
    if scenario.burst < 1:
        raise ValueError("emulator directive: burst must be >= 1")
    if scenario.workflow_status not in (None, "succeeded", "failed", "stopped"):
        raise ValueError("emulator directive: workflow_status must be 'failed' or 'stopped'")
    if scenario.chatflow_order not in (None, "post1131", "pre113"):
        raise ValueError("emulator directive: chatflow_order must be 'post1131' or 'pre113'")
    if isinstance(scenario.http_error, str) and scenario.http_error not in HTTP_ERROR_NAMES:
        raise ValueError(f"emulator directive: unknown http_error {scenario.http_error!r}")
    return scenario


def _coerce(key: str, value: Any) -> Any:
    try:
        if key in _INT_KEYS:
            return int(value)
        if key in _FLOAT_KEYS:
            number = float(value)
            if math.isnan(number) or number < 0:
                raise ValueError
            return number
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if key in _STR_KEYS or key == "workflow_status" or key == "chatflow_order":
            if not isinstance(value, str):
                raise ValueError
            return value
        if key in ("chunks", "raw_before"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
        if key in ("agent_steps", "retriever_resources"):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ValueError
            return value
        if key == "tts":
            if not isinstance(value, bool) and value not in TTS_VARIANTS:
                raise ValueError
            return value
        if key == "pause_for_input":
            if value is True:
                return {}
            if not isinstance(value, dict) or any(
                name not in _PAUSE_KEYS or not isinstance(setting, _PAUSE_KEYS[name]) for name, setting in value.items()
            ):
                raise ValueError
            return value
        if key in ("outputs", "usage"):
            if not isinstance(value, dict):
                raise ValueError
            return value
        if key == "http_error":
            if not isinstance(value, (str, dict)):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ValueError(f"emulator directive: bad value for {key!r}: {value!r}") from None
    return value


def split_words(text: str) -> list[str]:
    """One delta per word, each keeping its following whitespace, so the deltas join to `text`."""
    words = _WORD.findall(text)
    if not words:
        return [text] if text else []
    return words


def answer_deltas(scenario: Scenario, default_answer: str, prompt: str = "") -> list[str]:
    """The text deltas of the answer: `after_tool_result` when the prompt holds a tool result
    (the model's next step in a tool-calling loop), else `chunks`, else `tokens`, else the
    words of `answer`."""
    if scenario.after_tool_result is not None and _TOOL_RESULT.search(prompt):
        return split_words(scenario.after_tool_result)
    if scenario.chunks is not None:
        return list(scenario.chunks)
    if scenario.tokens is not None:
        return [f"w{i} " for i in range(1, scenario.tokens + 1)]
    return split_words(scenario.answer if scenario.answer is not None else default_answer)
