"""Dify events -> OpenAI chat completions, streamed or assembled.

One code path, two renderings: `DifyEventTranslator` turns each Dify event into output
items (text, a replacement, a keep-alive, the end); `ChunkEncoder` renders items as SSE
chunk bytes for streams, and `ChatCompletionBuilder` folds the same items into one
`chat.completion` body for non-streaming requests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from services.errors import OpenAIError, from_dify_error, server_error

# Output items are (kind, value) tuples: cheap on the per-event hot path.
TEXT = "text"  # value: text to append
REPLACE = "replace"  # value: text that replaces everything so far (Dify output moderation)
PING = "ping"  # value: None; Dify is alive but silent
END = "end"  # value: (finish_reason, usage dict or None)
ERROR = "error"  # value: an OpenAIError; the stream ends with it

PING_ITEM = (PING, None)

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage_from_dify(usage: Any) -> dict[str, int] | None:
    """OpenAI usage from Dify's `metadata.usage` (ints; Dify's prices are ignored)."""
    if not isinstance(usage, dict):
        return None
    counts = {key: int(usage.get(key) or 0) for key in _USAGE_KEYS}
    if not counts["total_tokens"]:
        counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
    return counts


def outputs_text(outputs: Any) -> str:
    """A workflow's answer from its End-node outputs: `answer`, `text` or `output`, else the
    only string output, else all outputs as JSON."""
    if not isinstance(outputs, dict) or not outputs:
        return ""
    for name in ("answer", "text", "output"):
        if isinstance(outputs.get(name), str):
            return outputs[name]
    strings = [value for value in outputs.values() if isinstance(value, str)]
    if len(strings) == 1:
        return strings[0]
    return json.dumps(outputs, ensure_ascii=False)


class DifyEventTranslator:
    """State of one Dify stream, for every app mode."""

    def __init__(self, app_mode: str, end_text: Callable[[str | None], str] | None = None) -> None:
        """`end_text(conversation_id)` is appended to the answer when it ends normally."""
        self.app_mode = app_mode
        self._end_text = end_text
        self.task_id: str | None = None
        self.conversation_id: str | None = None
        self.usage: dict[str, int] | None = None
        self.finished = False
        self._agent_text_seen = False
        self._text_seen = False
        self._workflow_succeeded = False

    def feed(self, event: dict[str, Any]) -> list[tuple[str, Any]]:
        name = event.get("event")
        if self.task_id is None and event.get("task_id"):
            self.task_id = event["task_id"]
            self.conversation_id = event.get("conversation_id") or None
        if name == "message_replace":
            return [(REPLACE, str(event.get("answer") or ""))]
        answer = event.get("answer")
        if answer is not None:
            return self._text(name, answer)
        if name == "ping":
            return [PING_ITEM]
        if name == "text_chunk":  # workflow apps stream End-node text this way
            return self._text(name, (event.get("data") or {}).get("text"))
        if name == "text_replace":
            return [(REPLACE, str((event.get("data") or {}).get("text") or ""))]
        if name == "message_end":
            self.usage = usage_from_dify((event.get("metadata") or {}).get("usage"))
            return self._end("stop")
        if name == "error":
            self.finished = True
            return [(ERROR, from_dify_error(400, event))]
        if name == "workflow_finished":
            return self._workflow_finished(event.get("data") or {})
        return []

    def _text(self, name: str | None, answer: Any) -> list[tuple[str, Any]]:
        # Any event with an `answer` is text, whatever its name: Dify 1.11.2-1.12 relabels
        # message chunks as `message_file` (dify-api.md 4.5).
        if name == "agent_message":
            self._agent_text_seen = True
        elif name == "message" and self.app_mode == "agent" and self._agent_text_seen:
            return []  # New Agent repeats the whole answer in one closing `message`.
        if not answer or not isinstance(answer, str):
            return []
        self._text_seen = True
        return [(TEXT, answer)]

    def _workflow_finished(self, data: dict[str, Any]) -> list[tuple[str, Any]]:
        # Chatflow: >= 1.13.1 sends message_end before workflow_finished, <= 1.12 after it.
        status = data.get("status")
        if status == "failed":
            self.finished = True
            reason = data.get("error") or "no reason given"
            return [(ERROR, server_error(f"Dify workflow failed: {reason}", 502, "workflow_failed"))]
        if status == "stopped":
            return self._end("stop")
        if self.app_mode != "workflow":
            self._workflow_succeeded = True  # chatflow: message_end carries the usage
            return []
        total = int(data.get("total_tokens") or 0)
        self.usage = {"prompt_tokens": 0, "completion_tokens": total, "total_tokens": total}
        # Text the End node streamed is the answer; otherwise it is in the outputs.
        answer = "" if self._text_seen else outputs_text(data.get("outputs"))
        return ([(TEXT, answer)] if answer else []) + self._end("stop")

    def _end(self, finish_reason: str) -> list[tuple[str, Any]]:
        if self.finished:
            return []
        self.finished = True
        suffix = self._end_text(self.conversation_id) if self._end_text else ""
        end = (END, (finish_reason, self.usage))
        return [(TEXT, suffix), end] if suffix else [end]

    def feed_eof(self) -> list[tuple[str, Any]]:
        """The body ended: fine after a terminal event, an error item otherwise."""
        if self.finished:
            return []
        if self._workflow_succeeded:  # Dify 1.13.0 cut chatflow streams at workflow_finished.
            return self._end("stop")
        self.finished = True
        return [(ERROR, server_error("Dify closed the stream before the answer was complete", 502,
                                     "upstream_incomplete"))]


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": ping\n\n"


def error_event(error: OpenAIError) -> bytes:
    return b"data: " + _compact(error.body()).encode() + b"\n\n"


class ChunkEncoder:
    """Renders output items as `chat.completion.chunk` SSE bytes (clients.md 2.2).

    The parts of a chunk that never change (id, created, model) are encoded once; a text
    delta costs one json.dumps of the text.
    """

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = _compact({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": model, "system_fingerprint": None})[:-1]
        self._head = "data: " + head + ',"choices":'
        self._content_prefix = (self._head + '[{"index":0,"delta":{"content":').encode()
        self._open_suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        self._include_usage = include_usage
        self._replaced = False

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return (self._head + _compact([choice]) + "}\n\n").encode()

    def role(self) -> bytes:
        return self._choice({"role": "assistant", "content": ""}, None)

    def content(self, text: str) -> bytes:
        # "replace": a lone surrogate (valid in JSON escapes) cannot become UTF-8.
        encoded = json.dumps(text, ensure_ascii=False).encode("utf-8", "replace")
        return self._content_prefix + encoded + self._open_suffix

    def render(self, items: list[tuple[str, Any]]) -> bytes:
        """The bytes for a batch of items; the batch holding END or ERROR also ends the stream."""
        out = []
        for kind, value in items:
            if kind == TEXT:
                out.append(self.content(value))
            elif kind == PING:
                out.append(KEEPALIVE)
            elif kind == REPLACE:
                # What was streamed cannot be taken back: the moderated text follows it.
                self._replaced = True
                out.append(self.content(value))
            elif kind == END:
                finish_reason, usage = value
                out.append(self._choice({}, "content_filter" if self._replaced else finish_reason))
                if self._include_usage:
                    usage = usage or {key: 0 for key in _USAGE_KEYS}
                    out.append((self._head + "[]," + _compact({"usage": usage})[1:] + "\n\n").encode())
                out.append(DONE)
            elif kind == ERROR:
                out.append(error_event(value))
                out.append(DONE)
        return b"".join(out)


class ChatCompletionBuilder:
    """Folds output items into one non-streaming `chat.completion` body."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.finish_reason = "stop"
        self.usage: dict[str, int] | None = None

    def add(self, kind: str, value: Any) -> None:
        if kind == TEXT:
            self._parts.append(value)
        elif kind == REPLACE:
            self._parts = [value]
            self.finish_reason = "content_filter"
        elif kind == END:
            finish_reason, self.usage = value
            if self.finish_reason != "content_filter":
                self.finish_reason = finish_reason
        elif kind == ERROR:
            raise value  # nothing was sent yet: the client gets a real HTTP error

    def body(self, completion_id: str, created: int, model: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(self._parts), "refusal": None}
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage or {key: 0 for key in _USAGE_KEYS},
        }


def now() -> int:
    return int(time.time())
