"""JSON as models write it: parsed with small repairs, and coerced to a JSON schema.

Models slip: a trailing comma, a missing closing brace, Python's True/None, single quotes,
raw newlines in strings, arguments given as a string holding JSON. `loads_tolerant` repairs
what can be repaired without guessing; `coerce` converts values to the schema's types where
that is unambiguous ("3" -> 3 for an integer). Pure: data in, data out.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any


class InvalidJSON(Exception):
    """Text that is not JSON even after the small repairs."""


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity would make the arguments string invalid JSON


# strict=False: models put raw newlines inside strings (code arguments, multi-line text).
_DECODER = json.JSONDecoder(strict=False, parse_constant=_reject_constant)
_WORD_RE = re.compile(r"\w+")
_PYTHON_WORDS = {"True": "true", "False": "false", "None": "null"}
_CLOSERS = {"{": "}", "[": "]"}


def loads_tolerant(text: str) -> Any:
    """Parse JSON, repairing the slips models make; raises `InvalidJSON` when that is not enough."""
    text = text.strip()
    try:
        return _decode(text)
    except InvalidJSON:
        return _decode(_repair(text))


def _decode(text: str) -> Any:
    try:
        value, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError) as error:
        raise InvalidJSON(str(error)) from None
    if text[end:].strip(" \t\r\n}]"):  # one closing brace too many is a slip; more text is not
        raise InvalidJSON("text after the JSON value")
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
                raise InvalidJSON("mismatched bracket")
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
    raise InvalidJSON("unterminated string")  # closing it would guess the rest of the value


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


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- coercion to the schema ----------------------------------------------------------------

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
    except InvalidJSON:
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
        return compact(value)
    return value
