"""Output items -> OpenAI responses: SSE chunks for streams, one JSON body otherwise.

A response has one or more choices (`n`, or one per prompt on /v1/completions); each has its
own encoder (stream) or collector (non-stream). `sse_body` interleaves the choices' chunks
and ends the stream; `collect` folds them for a JSON body. Chat and text completions differ
only in the chunk and body shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable
from itertools import chain
from typing import Any, Protocol

from core.errors import OpenAIError
from core.items import (
    AGENT_TOOL_CALL,
    AGENT_TOOL_RESULT,
    CITATIONS,
    END,
    ERROR,
    PING,
    REASONING,
    REPLACE,
    TEXT,
    THINK_TAG,
    TOOL_CALL,
    USAGE_KEYS,
    Item,
)
from core.tolerant_json import compact

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": ping\n\n"


def json_text(text: str) -> bytes:
    # "replace": a lone surrogate (valid in JSON escapes) cannot become UTF-8.
    return json.dumps(text, ensure_ascii=False).encode("utf-8", "replace")


def error_event(error: OpenAIError) -> bytes:
    return b"data: " + compact(error.body()).encode() + b"\n\n"


def add_usage(total: dict[str, int], usage: dict[str, int] | None) -> None:
    for key in USAGE_KEYS:
        total[key] += (usage or {}).get(key, 0)


class ChoiceEncoder(Protocol):
    """One choice's stream: its opening, its items' events, and how the stream ends."""

    def opening(self) -> bytes: ...

    def render(self, items: list[Item]) -> bytes: ...

    def completed(self, usage: dict[str, int], include_usage: bool) -> bytes:
        """The end of a stream whose every choice finished (`usage` summed over them)."""

    def failed(self) -> bytes:
        """The end of a stream after an ERROR item (rendered by `render`)."""


class _ChunkEncoder:
    """Shared parts: the constant head (id, created, model) is encoded once, so a text delta
    costs one json.dumps of the text."""

    def __init__(self, head: dict[str, Any], index: int, text_key: bytes, text_close: bytes,
                 finish_fields: dict[str, Any]) -> None:
        self._head = "data: " + compact(head)[:-1] + ',"choices":'
        self._index = index
        self._finish_fields = finish_fields
        self._text_prefix = (self._head + f'[{{"index":{index},').encode() + text_key
        self._text_suffix = text_close + b',"logprobs":null,"finish_reason":null}]}\n\n'
        self._replaced = False

    def _choice(self, fields: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": self._index, **fields, "logprobs": None, "finish_reason": finish_reason}
        return (self._head + compact([choice]) + "}\n\n").encode()

    def text(self, text: str) -> bytes:
        return self._text_prefix + json_text(text) + self._text_suffix

    def finish(self, finish_reason: str) -> bytes:
        return self._choice(self._finish_fields, finish_reason)

    def render(self, items: list[Item]) -> bytes:
        """Chunks for a batch of one choice's items (END: its finish chunk; ERROR: the error event)."""
        out = []
        for kind, value in items:
            if kind == TEXT:
                out.append(self.text(value))
            elif kind == PING:
                out.append(KEEPALIVE)
            elif kind == REPLACE:
                # What was streamed cannot be taken back: the moderated text follows it.
                self._replaced = True
                out.append(self.text(value))
            elif kind == END:
                out.append(self.finish("content_filter" if self._replaced else value[0]))
            elif kind == ERROR:
                out.append(error_event(value))
            else:
                out.append(self.extra(kind, value))
        return b"".join(out)

    def extra(self, kind: str, value: Any) -> bytes:
        """Chunks for item kinds this response shape does not carry: none."""
        return b""

    def usage_chunk(self, usage: dict[str, int]) -> bytes:
        return (self._head + "[]," + compact({"usage": usage})[1:] + "\n\n").encode()

    def completed(self, usage: dict[str, int], include_usage: bool) -> bytes:
        """The usage chunk only when asked (legacy code indexes choices[0] of every chunk), then [DONE]."""
        return (self.usage_chunk(usage) if include_usage else b"") + DONE

    def failed(self) -> bytes:
        return DONE


class ChatChunkEncoder(_ChunkEncoder):
    """`chat.completion.chunk` events (docs/clients.md 2.2), with reasoning and tool calls."""

    def __init__(self, completion_id: str, created: int, model: str, index: int = 0,
                 legacy_functions: bool = False) -> None:
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None}
        super().__init__(head, index, b'"delta":{"content":', b"}", {"delta": {}})
        self._legacy_functions = legacy_functions
        self._tool_calls = 0

    def opening(self) -> bytes:
        return self._choice({"delta": {"role": "assistant", "content": ""}}, None)

    def extra(self, kind: str, value: Any) -> bytes:
        if kind == REASONING:
            return self._choice({"delta": {"reasoning_content": value}}, None)
        if kind == THINK_TAG:
            return self.text(value)
        if kind == TOOL_CALL:
            return self._tool_call(value.id, value.name, value.arguments, self._legacy_functions)
        if kind == AGENT_TOOL_CALL:  # already run on Dify: shown, never a call to make
            return self._tool_call(value["id"], value["name"], value["arguments"], False)
        if kind == AGENT_TOOL_RESULT:
            return self._choice({"delta": {"reasoning_content": agent_result_text(value)}}, None)
        if kind == CITATIONS:  # CITATIONS=field: on the last content chunk, before the finish chunk
            return self._choice({"delta": {"content": "", "citations": value}}, None)
        return b""

    def _tool_call(self, call_id: str, name: str, arguments: str, legacy: bool) -> bytes:
        """A call as docs/clients.md rule 7 requires: a first delta with index, id, type, name and
        empty arguments, then one delta with only the index and the arguments; one call per
        delta (NextChat reads only tool_calls[0])."""
        if legacy:  # `function_call` holds one call: the first one wins
            if self._tool_calls:
                return b""
            self._tool_calls = 1
            return (self._choice({"delta": {"function_call": {"name": name, "arguments": ""}}}, None)
                    + self._choice({"delta": {"function_call": {"arguments": arguments}}}, None))
        index, self._tool_calls = self._tool_calls, self._tool_calls + 1
        first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        return (self._choice({"delta": {"tool_calls": [first]}}, None)
                + self._choice({"delta": {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}},
                               None))


def agent_result_text(result: dict[str, Any]) -> str:
    return f"{result['name']} returned: {result['content']}\n"


class TextChunkEncoder(_ChunkEncoder):
    """`text_completion` events of /v1/completions (docs/clients.md 3); `echo` repeats the prompt."""

    def __init__(self, completion_id: str, created: int, model: str, index: int, echo: str = "") -> None:
        super().__init__({"id": completion_id, "object": "text_completion", "created": created, "model": model},
                         index, b'"text":', b"", {"text": ""})
        self._echo = echo

    def opening(self) -> bytes:
        return self.text(self._echo) if self._echo else b""



# Waits for the next batch, as (choice index, items); None at the end.
NextBatch = Callable[[], tuple[int, list[Item]] | None]


def sse_body(next_batch: NextBatch, encoders: list[ChoiceEncoder], include_usage: bool,
             close: Callable[[], None], first: Iterable[tuple[int, list[Item]]] = ()) -> Generator[bytes, None, None]:
    """The SSE body: every choice's chunks as they come; once all choices ended, the
    encoders' ending (chat: the usage chunk when asked, then [DONE]). An error ends the whole
    stream (chat: one error event and [DONE]). `first` (what arrived
    before the stream was committed) goes out with the opening chunks in the first write,
    which also carries the response headers. `close` runs at the end, also when the client
    goes away."""
    pending = set(range(len(encoders)))
    usage = dict.fromkeys(USAGE_KEYS, 0)

    def render(index: int, items: list[Item]) -> tuple[bytes, bool]:
        out = encoders[index].render(items)
        for kind, value in items:
            if kind == END:
                pending.discard(index)
                add_usage(usage, value[1])
            elif kind == ERROR:
                return out + encoders[index].failed(), True
        if not pending:
            return out + encoders[0].completed(usage, include_usage), True
        return out, False

    def opening(first: Iterable[tuple[int, list[Item]]]) -> tuple[bytes, bool]:
        head = b"".join(encoder.opening() for encoder in encoders)
        for index, items in first:
            piece, ended = render(index, items)
            head += piece
            if ended:
                return head, True
        return head or KEEPALIVE, False

    try:
        head, ended = opening(first)
        yield head
        if ended:
            return
        # Nothing already written stays referenced while the stream waits for Dify: with
        # hundreds of held streams, each one's last write would add up.
        del head, first
        yield b""  # the server's loop variable held the first write; an empty one writes nothing
        while (batch := next_batch()) is not None:
            piece, ended = render(*batch)
            del batch
            if piece:
                yield piece
            if ended:
                return
            del piece
    finally:
        close()


class ChoiceCollector:
    """One choice of a non-streaming response: its text, reasoning, tool calls, finish
    reason and usage."""

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix  # /v1/completions `echo`: the prompt, kept when Dify replaces the answer
        self._parts: list[str] = [prefix] if prefix else []
        self._reasoning: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.citations: list[dict[str, Any]] = []
        self.finish_reason = "stop"
        self.usage: dict[str, int] | None = None

    def add(self, kind: str, value: Any) -> None:
        if kind in (TEXT, THINK_TAG):
            self._parts.append(value)
        elif kind == REASONING:
            self._reasoning.append(value)
        elif kind == TOOL_CALL:
            self.tool_calls.append(_call_object(value.id, value.name, value.arguments))
        elif kind == AGENT_TOOL_CALL:
            self.tool_calls.append(_call_object(value["id"], value["name"], value["arguments"]))
        elif kind == AGENT_TOOL_RESULT:
            self._reasoning.append(agent_result_text(value))
        elif kind == CITATIONS:
            self.citations += value
        elif kind == REPLACE:
            self._parts = [self._prefix, value] if self._prefix else [value]
            self.finish_reason = "content_filter"
        elif kind == END:
            finish_reason, self.usage = value
            if self.finish_reason != "content_filter":
                self.finish_reason = finish_reason
        elif kind == ERROR:
            raise value  # nothing was sent yet: the client gets a real HTTP error

    @property
    def text(self) -> str:
        return "".join(self._parts)

    @property
    def reasoning(self) -> str:
        return "".join(self._reasoning)

    def chat_message(self, legacy_functions: bool) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text, "refusal": None}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.citations:
            message["citations"] = self.citations
        if self.tool_calls:
            if not self.text.strip():
                message["content"] = None  # OpenAI's shape for a message that only calls tools
            if legacy_functions:
                message["function_call"] = self.tool_calls[0]["function"]
            else:
                message["tool_calls"] = self.tool_calls
        return message


def _call_object(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def collect(first: Iterable[tuple[int, list[Item]]], next_batch: NextBatch, collectors: list[ChoiceCollector],
            close: Callable[[], None]) -> dict[str, int]:
    """Fold `first`, then every batch still to come, into its choice's collector; returns the
    summed usage."""
    try:
        for index, items in chain(first, iter(next_batch, None)):
            collector = collectors[index]
            for kind, value in items:
                collector.add(kind, value)
    finally:
        close()
    usage = dict.fromkeys(USAGE_KEYS, 0)
    for collector in collectors:
        add_usage(usage, collector.usage)
    return usage


def chat_completion_body(completion_id: str, created: int, model: str, collectors: list[ChoiceCollector],
                         usage: dict[str, int], legacy_functions: bool = False) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": index, "message": collector.chat_message(legacy_functions), "logprobs": None,
             "finish_reason": collector.finish_reason}
            for index, collector in enumerate(collectors)
        ],
        "usage": usage,
    }


def text_completion_body(completion_id: str, created: int, model: str, collectors: list[ChoiceCollector],
                         usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"text": collector.text, "index": index, "logprobs": None, "finish_reason": collector.finish_reason}
            for index, collector in enumerate(collectors)
        ],
        "usage": usage,
    }


class ChatShape:
    """A chat completion's shapes: `chat.completion.chunk` encoders for a stream, collectors
    and the `chat.completion` body otherwise."""

    def __init__(self, completion_id: str, created: int, model: str, choices: int,
                 legacy_functions: bool = False) -> None:
        self._head = (completion_id, created, model)
        self._choices = choices
        self._legacy_functions = legacy_functions

    def encoders(self) -> list[ChoiceEncoder]:
        return [ChatChunkEncoder(*self._head, index, self._legacy_functions) for index in range(self._choices)]

    def collectors(self) -> list[ChoiceCollector]:
        return [ChoiceCollector() for _ in range(self._choices)]

    def body(self, collectors: list[ChoiceCollector], usage: dict[str, int]) -> dict[str, Any]:
        return chat_completion_body(*self._head, collectors, usage, self._legacy_functions)


class TextShape:
    """A legacy text completion's shapes; `echoes` holds each choice's echoed prompt ("" without echo)."""

    def __init__(self, completion_id: str, created: int, model: str, echoes: list[str]) -> None:
        self._head = (completion_id, created, model)
        self._echoes = echoes

    def encoders(self) -> list[ChoiceEncoder]:
        return [TextChunkEncoder(*self._head, index, echo) for index, echo in enumerate(self._echoes)]

    def collectors(self) -> list[ChoiceCollector]:
        return [ChoiceCollector(prefix=echo) for echo in self._echoes]

    def body(self, collectors: list[ChoiceCollector], usage: dict[str, int]) -> dict[str, Any]:
        return text_completion_body(*self._head, collectors, usage)


class ResponseShape(Protocol):
    def encoders(self) -> list[ChoiceEncoder]: ...

    def collectors(self) -> list[ChoiceCollector]: ...

    def body(self, collectors: list[ChoiceCollector], usage: dict[str, int]) -> dict[str, Any]: ...
