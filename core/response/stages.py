"""Small text stages of the output pipeline: stop sequences and JSON-only answers.

A stage takes answer text in arbitrary pieces (`feed`) and gives back items, holding back
only what it must; `flush` gives back what it still holds when the answer ends.
"""

from __future__ import annotations

import json
import re
from typing import Any

from core.items import TEXT, Item


class StopSequences:
    """Cuts the answer before the first stop string (OpenAI `stop`), which may arrive split
    across pieces: only a tail that could still start a stop string is held back."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._longest = max(map(len, self._stops), default=0)
        self._held = ""
        self.hit = False

    def feed(self, text: str) -> list[Item]:
        if self.hit:
            return []
        text = self._held + text
        cut = min((index for stop in self._stops if (index := text.find(stop)) >= 0), default=-1)
        if cut >= 0:
            self.hit, self._held = True, ""
            return [(TEXT, text[:cut])] if cut else []
        keep = self._open_tail(text)
        self._held = text[len(text) - keep:] if keep else ""
        released = text[:len(text) - keep]
        return [(TEXT, released)] if released else []

    def _open_tail(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for size in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0

    def flush(self) -> list[Item]:
        held, self._held = self._held, ""
        return [(TEXT, held)] if held and not self.hit else []


_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def json_answer(text: str) -> str:
    """The JSON in an answer asked to be JSON: the answer itself when it parses, else the
    first fenced block or the outermost {...} that parses, else the answer unchanged."""
    candidates = [text.strip()]
    candidates += [match.group(1).strip() for match in _FENCED.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            json.loads(candidate)
        except ValueError:
            continue
        return candidate
    return text


def json_instructions(response_format: dict[str, Any]) -> str:
    """What the app is told when the client asks for JSON (`response_format`)."""
    text = "Answer with one valid JSON object only: no prose, no code fences."
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if response_format.get("type") == "json_schema" and schema:
        text += " It must match this JSON schema: " + json.dumps(schema, ensure_ascii=False, separators=(",", ":"))
    return text


class JsonAnswer:
    """For `response_format` json_object / json_schema: the whole answer is held and given
    back at the end as its JSON part (models like to wrap JSON in prose or code fences)."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, text: str) -> list[Item]:
        self._parts.append(text)
        return []

    def flush(self) -> list[Item]:
        text, self._parts = "".join(self._parts), []
        return [(TEXT, json_answer(text))] if text else []
