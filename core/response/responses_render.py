"""Output items -> the Responses API: the Response object, or its typed stream of events.

`ResponseOutput` turns items (core/items.py) into output items, in order: answer text into
`message` items with one `output_text` part, think-tag text and agent steps into `reasoning`
items (agent tools already ran on Dify: shown, never a call for the client), tool calls into
`function_call` items (with the `namespace` of a function offered from a namespace group).
Each step also returns the stream events it causes; the stream encoder numbers and writes
them, the collector keeps only the final items. One state machine, two renderings, as chat
completions have. When Dify's moderation replaces the answer (REPLACE), what streamed cannot be
taken back, so the replacement follows it as one more delta; but the message's final text (its
`.done` events, the Response object) is the replacement alone.

The response id carries the Dify conversation and message (core/response_ids.py), which Dify
names in its first event. A JSON body takes the id once the answer is collected. A stream of
an app with conversations whose first Dify event came after FIRST_EVENT_WAIT holds back
`response.created` (keep-alive comments go out meanwhile) until Dify names them, so that the
id is never a random one that `previous_response_id` could not continue.

A stream opens with `response.created` and `response.in_progress`, brackets every output item
with `response.output_item.added` / `.done` (and its content part with
`response.content_part.added` / `.done`), and ends with `response.completed`, or
`response.failed` when Dify fails after the first token. Every event carries its
`sequence_number`; events go out as `event: <type>` and `data: <json>` lines, as OpenAI
writes them, and no `[DONE]` follows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from core.errors import OpenAIError
from core.items import (
    AGENT_TOOL_CALL,
    AGENT_TOOL_RESULT,
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
from core.response.render import KEEPALIVE, agent_result_text, json_text
from core.response_ids import response_id
from core.tolerant_json import compact


class TextDelta(NamedTuple):
    """A text delta event, the stream's most frequent one: everything in it up to the delta
    text is the same for one output item, so it is encoded once per item (`head`), as the chat
    encoder does with its chunk head."""

    head: bytes
    text: str


Event = dict[str, Any] | TextDelta


def responses_usage(usage: dict[str, int] | None) -> dict[str, Any]:
    counts = {key: (usage or {}).get(key, 0) for key in USAGE_KEYS}
    return {"input_tokens": counts["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["total_tokens"]}


class ResponseOutput:
    """The output items of one response, built as items arrive (see the module docstring)."""

    def __init__(self, response_hex: str, namespaced: dict[str, tuple[str, str]] | None = None) -> None:
        self.items: list[dict[str, Any]] = []
        self._id_base = response_hex  # item ids derive from the fallback id's random hex: unique, no randomness here
        self._namespaced = namespaced or {}  # offered name -> (namespace, name) (core/request/responses_request.py)
        self._open: dict[str, Any] | None = None  # the message or reasoning item text is going into
        self._delta_head = b""  # the TextDelta head of the open item
        self._parts: list[str] = []
        self.incomplete_reason: str | None = None  # "content_filter" after Dify's output moderation

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._id_base}{len(self.items):03d}"

    def feed(self, kind: str, value: Any) -> list[Event]:
        if kind in (TEXT, THINK_TAG):
            return self._text("message", value)
        if kind == REPLACE:
            self.incomplete_reason = "content_filter"
            return self._replace(value)
        if kind == REASONING:
            return self._text("reasoning", value)
        if kind == AGENT_TOOL_CALL:
            return self._text("reasoning", f"Calling tool {value['name']} with {value['arguments']}\n")
        if kind == AGENT_TOOL_RESULT:
            return self._text("reasoning", agent_result_text(value))
        if kind == TOOL_CALL:
            return self.close() + self._function_call(value.id, value.name, value.arguments)
        if kind in (END, ERROR):
            return self.close()
        return []  # citations (CITATIONS=field) have no place here; pings are the encoder's

    def _text(self, item_type: str, text: str) -> list[Event]:
        if not text:
            return []
        events: list[Event] = []
        if self._open is None or self._open["type"] != item_type:
            events = self.close() + self._open_item(item_type)
        item = self._open
        assert item is not None
        self._parts.append(text)
        events.append(TextDelta(self._delta_head, text))
        return events

    def _replace(self, text: str) -> list[Event]:
        """Dify's moderation replaced the answer so far: the replacement goes out as a delta
        (what streamed cannot be taken back), and it is the whole final text of the message;
        the messages finished before it keep no text."""
        for item in self.items:
            if item["type"] == "message" and item is not self._open:
                item["content"] = [{"type": "output_text", "text": "", "annotations": []}]
        if self._open is not None and self._open["type"] == "message":
            self._parts = []
        return self._text("message", text)

    def _open_item(self, item_type: str) -> list[Event]:
        if item_type == "message":
            item = {"id": self._new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
        else:
            item = {"id": self._new_id("rs"), "type": "reasoning", "summary": [], "content": []}
            part = {"type": "reasoning_text", "text": ""}
        index = len(self.items)
        self.items.append(item)
        self._open, self._parts = item, []
        delta_type = "response.output_text.delta" if item_type == "message" else "response.reasoning_text.delta"
        fields = {"type": delta_type, "item_id": item["id"], "output_index": index, "content_index": 0,
                  **({"logprobs": []} if item_type == "message" else {})}
        self._delta_head = f'event: {delta_type}\ndata: {compact(fields)[:-1]},"delta":'.encode()
        return [{"type": "response.output_item.added", "output_index": index, "item": dict(item)},
                {"type": "response.content_part.added", "item_id": item["id"], "output_index": index,
                 "content_index": 0, "part": part}]

    def close(self) -> list[Event]:
        """Finish the open message or reasoning item (its text is complete)."""
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(self._parts)
        index = len(self.items) - 1
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            item.update(status="completed", content=[part])
            done = {"type": "response.output_text.done", "item_id": item["id"], "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}
        else:
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            done = {"type": "response.reasoning_text.done", "item_id": item["id"], "output_index": index,
                    "content_index": 0, "text": text}
        return [done,
                {"type": "response.content_part.done", "item_id": item["id"], "output_index": index,
                 "content_index": 0, "part": part},
                {"type": "response.output_item.done", "output_index": index, "item": item}]

    def _function_call(self, call_id: str, offered_name: str, arguments: str) -> list[Event]:
        index = len(self.items)
        namespace, name = self._namespaced.get(offered_name, (None, offered_name))
        item = {"id": self._new_id("fc"), "type": "function_call", "status": "in_progress", "call_id": call_id,
                "name": name, **({"namespace": namespace} if namespace else {}), "arguments": ""}
        self.items.append(item)
        added = {"type": "response.output_item.added", "output_index": index, "item": dict(item)}
        item.update(status="completed", arguments=arguments)
        return [added,
                {"type": "response.function_call_arguments.delta", "item_id": item["id"], "output_index": index,
                 "delta": arguments},
                {"type": "response.function_call_arguments.done", "item_id": item["id"], "output_index": index,
                 "name": name, "arguments": arguments},
                {"type": "response.output_item.done", "output_index": index, "item": item}]


# (Dify conversation id, message id) of the answer once Dify's first event named them (an id it
# did not name is None); None while Dify has not said yet.
DifyIds = Callable[[], tuple[str | None, str | None] | None]


class ResponseHead:
    """What every Response object of one request holds besides its output.

    The id is taken when it is first used (see the module docstring): from `dify_ids`, or
    `fallback_id` (`resp_` and 32 random hex digits) when they name no conversation. `hold`:
    whether a stream should wait for Dify's ids before it opens (an app with conversations)."""

    def __init__(self, dify_ids: DifyIds, fallback_id: str, created_at: int, model: str, echoed: dict[str, Any],
                 hold: bool = False) -> None:
        self._dify_ids = dify_ids
        self.fallback_id = fallback_id
        self._id: str | None = None
        self.created_at = created_at
        self.model = model
        self.echoed = echoed
        self._hold = hold

    @property
    def response_id(self) -> str:
        if self._id is None:
            conversation_id, message_id = self._dify_ids() or (None, None)
            self._id = response_id(conversation_id, message_id, self.fallback_id)
        return self._id

    def ready(self) -> bool:
        """Whether the id can be taken now without giving up one Dify is about to name."""
        return self._id is not None or not self._hold or self._dify_ids() is not None

    def response(self, status: str, output: ResponseOutput | None, usage: dict[str, int] | None = None,
                 error: OpenAIError | None = None) -> dict[str, Any]:
        incomplete = output is not None and output.incomplete_reason is not None and status == "completed"
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "error": None if error is None else {"code": error.code or error.type, "message": error.message},
            "incomplete_details": {"reason": output.incomplete_reason} if incomplete else None,
            "model": self.model,
            "output": [] if output is None else output.items,
            "usage": None if status == "in_progress" else responses_usage(usage),
            **self.echoed,
        }


def _event_bytes(event: Event, sequence_number: int) -> bytes:
    if type(event) is TextDelta:
        return b'%s%s,"sequence_number":%d}\n\n' % (event.head, json_text(event.text), sequence_number)
    event["sequence_number"] = sequence_number
    return f"event: {event['type']}\ndata: {compact(event)}\n\n".encode("utf-8", "replace")


class ResponseEventEncoder:
    """The stream of one response (a ChoiceEncoder for core/response/render.py's sse_body)."""

    def __init__(self, head: ResponseHead, output: ResponseOutput) -> None:
        self._head = head
        self._output = output
        self._sequence = 0
        self._opened = False

    def _events(self, events: list[Event]) -> bytes:
        out = []
        for event in events:
            out.append(_event_bytes(event, self._sequence))
            self._sequence += 1
        return b"".join(out)

    def opening(self) -> bytes:
        return self._open(force=False)

    def _open(self, force: bool) -> bytes:
        """`response.created` and `response.in_progress`, once: as soon as the response id is
        known, or when output must go out (`force`), named by what Dify said so far. Until then
        nothing: the stream writes keep-alive comments."""
        if self._opened or not (force or self._head.ready()):
            return b""
        self._opened = True
        response = self._head.response("in_progress", None)
        return self._events([{"type": "response.created", "response": response},
                             {"type": "response.in_progress", "response": response}])

    def render(self, items: list[Item]) -> bytes:
        out = [] if self._opened else [self._open(force=any(kind != PING for kind, _ in items))]
        for kind, value in items:
            if kind == PING:
                out.append(KEEPALIVE)
                continue
            out.append(self._events(self._output.feed(kind, value)))
            if kind == ERROR:
                failed = self._head.response("failed", self._output, error=value)
                out.append(self._events([{"type": "response.failed", "response": failed}]))
        return b"".join(out)

    def completed(self, usage: dict[str, int], include_usage: bool) -> bytes:
        response = self._head.response("completed", self._output, usage)
        return self._events([{"type": "response.completed", "response": response}])

    def failed(self) -> bytes:
        return b""  # `render` wrote response.failed with the error


class ResponseCollector:
    """A non-streaming response: the final output items and the usage."""

    def __init__(self, output: ResponseOutput) -> None:
        self.output = output
        self.usage: dict[str, int] | None = None

    def add(self, kind: str, value: Any) -> None:
        if kind == ERROR:
            raise value  # nothing was sent yet: the client gets a real HTTP error
        self.output.feed(kind, value)
        if kind == END:
            self.usage = value[1]


class ResponsesShape:
    """The Responses API shapes of one response (see core/response/render.py's ResponseShape)."""

    def __init__(self, head: ResponseHead, namespaced: dict[str, tuple[str, str]] | None = None) -> None:
        self._head = head
        self._hex = head.fallback_id[-24:]  # item ids: known before the response id is
        self._namespaced = namespaced

    def encoders(self) -> list[ResponseEventEncoder]:
        return [ResponseEventEncoder(self._head, ResponseOutput(self._hex, self._namespaced))]

    def collectors(self) -> list[ResponseCollector]:
        return [ResponseCollector(ResponseOutput(self._hex, self._namespaced))]

    def body(self, collectors: list[ResponseCollector], usage: dict[str, int]) -> dict[str, Any]:
        return self._head.response("completed", collectors[0].output, usage)
