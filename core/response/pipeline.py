"""The stages between a choice's Dify events and its rendering.

Text items from the translator pass through a chain of text stages, in order: the
reasoning splitter (`<think>` text becomes reasoning), the tool-call parser (`<tool_call>`
blocks become calls), the JSON-answer stage (`response_format`), and stop sequences. At
the end each stage flushes what it held into the stages after it, the finish reason
follows what was found, and the memory mode's reply suffix (mode 2's invisible
conversation id) closes the text. Each stage holds back only what could still change
meaning, so ordinary text streams straight through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from core.items import END, ERROR, REPLACE, TEXT, Item
from core.response.stages import StopSequences
from core.response.tool_parser import ToolCallParser


class TextStage(Protocol):
    def feed(self, text: str) -> list[Item]: ...

    def flush(self) -> list[Item]: ...


def _through(stage: TextStage, items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        out += stage.feed(item[1]) if item[0] == TEXT else [item]
    return out


class OutputPipeline:
    def __init__(self, stages: list[TextStage], suffix: Callable[[], str] | None = None) -> None:
        """`stages` in order; `suffix()` gives text to append when the answer ends normally."""
        self._stages = stages
        self._suffix = suffix
        self._tools = next((stage for stage in stages if isinstance(stage, ToolCallParser)), None)
        self._stop = next((stage for stage in stages if isinstance(stage, StopSequences)), None)
        self.ended = False  # a stop sequence ended the answer before Dify did

    @property
    def active(self) -> bool:
        return bool(self._stages or self._suffix)

    def process(self, items: list[Item]) -> list[Item]:
        out: list[Item] = []
        for item in items:
            if self.ended:
                break
            kind = item[0]
            if kind == TEXT:
                pieces = [item]
                for stage in self._stages:
                    pieces = _through(stage, pieces)
                out += pieces
                if self._stop and self._stop.hit:
                    out += self._end("stop", None)
                    self.ended = True
            elif kind == END:
                out += self._end(*item[1])
            elif kind == ERROR:
                out += self._flush(broken=True)  # what the model said before the failure is not lost
                out.append(item)
            elif kind == REPLACE:
                self._discard()
                out.append(item)
            else:
                out.append(item)
        return out

    def _discard(self) -> None:
        """Dify replaced the answer (output moderation): what the stages still hold belongs to
        the text being replaced, so it is dropped, not shown after the replacement (or, for a
        JSON answer held whole, shown at all); the text after the replacement starts afresh,
        outside any think block."""
        for stage in self._stages:
            if isinstance(stage, ToolCallParser):
                stage.release()
            else:
                stage.flush()

    def _flush(self, broken: bool = False) -> list[Item]:
        """What the stages hold, in order: each stage first takes what the stages before it
        gave out at the end, then gives out all it holds. When the answer `broken` off, a
        half-written tool call is released as text rather than completed into a call."""
        pending: list[Item] = []
        for stage in self._stages:
            pending = _through(stage, pending)
            pending += stage.release() if broken and isinstance(stage, ToolCallParser) else stage.flush()
        return pending

    def _end(self, finish_reason: str, usage: Any) -> list[Item]:
        out = self._flush()
        if self._tools and self._tools.calls:
            finish_reason = "function_call" if self._tools.request.legacy else "tool_calls"
        suffix = self._suffix() if self._suffix else ""
        if suffix:
            out.append((TEXT, suffix))
        out.append((END, (finish_reason, usage)))
        return out
