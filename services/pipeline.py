"""The stages between a choice's Dify events and its rendering.

Text items from the translator pass through the reasoning splitter (`<think>` text becomes
reasoning) and the tool-call parser (`<tool_call>` blocks become calls). At the end the
stages flush what they held, the finish reason follows what was found, and the memory
mode's reply suffix (mode 2's invisible conversation id) closes the text. Each stage holds
back only what could still change meaning, so ordinary text streams straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.reasoning import ThinkSplitter
from services.tools import ToolCallParser
from services.translate import END, ERROR, TEXT

Item = tuple[str, Any]


class OutputPipeline:
    def __init__(self, think: ThinkSplitter | None = None, tools: ToolCallParser | None = None,
                 suffix: Callable[[], str] | None = None) -> None:
        """`suffix()` gives text to append when the answer ends normally."""
        self._think = think
        self._tools = tools
        self._suffix = suffix

    @property
    def active(self) -> bool:
        return bool(self._think or self._tools or self._suffix)

    def process(self, items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for item in items:
            kind = item[0]
            if kind == TEXT:
                out += self._text(item[1])
            elif kind == END:
                out += self._end(item[1])
            elif kind == ERROR:
                out += self._flush()  # what the model said before the failure is not lost
                out.append(item)
            else:
                out.append(item)
        return out

    def _text(self, text: str) -> list[Item]:
        pieces = self._think.feed(text) if self._think else [(TEXT, text)]
        return self._parse_tools(pieces)

    def _parse_tools(self, pieces: list[Item]) -> list[Item]:
        if not self._tools:
            return pieces
        out: list[Item] = []
        for piece in pieces:
            out += self._tools.feed(piece[1]) if piece[0] == TEXT else [piece]
        return out

    def _flush(self) -> list[Item]:
        out = self._parse_tools(self._think.flush()) if self._think else []
        if self._tools:
            out += self._tools.flush()
        return out

    def _end(self, value: tuple[str, Any]) -> list[Item]:
        finish_reason, usage = value
        out = self._flush()
        if self._tools and self._tools.calls:
            finish_reason = "function_call" if self._tools.request.legacy else "tool_calls"
        suffix = self._suffix() if self._suffix else ""
        if suffix:
            out.append((TEXT, suffix))
        out.append((END, (finish_reason, usage)))
        return out
