"""SSE framing and JSON encoding of stream events.

Every data event is `data: <one-line JSON>\\n\\n`; keep-alives are the bare
`event: ping\\n\\n`. Dify >= 1.8.1 writes compact JSON with raw UTF-8, older
servers `json.dumps` defaults. Each stream has a constant envelope (the keys
after `event`), so the envelope is encoded once per stream and event name, and
only the varying fields are encoded per event; text deltas use a pre-split
template so that only the delta string itself is encoded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

PING = b"event: ping\n\n"

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_SPACED = json.JSONEncoder()
# A string that can never occur in real data; its JSON form marks where a text delta goes.
_SLOT = "\x00emulator-slot\x00"


class EventEncoder:
    """Encodes the events of one stream.

    `envelope` holds the keys sent after `event` on every event (for example
    conversation_id, message_id, created_at); `task_id` follows them on every
    event except `error`.
    """

    def __init__(self, envelope: dict[str, Any], task_id: str, compact: bool) -> None:
        self._json = _COMPACT if compact else _SPACED
        self._sep = "," if compact else ", "
        self._envelope = envelope
        self._task_id = task_id
        self._heads: dict[str, str] = {}

    def _head(self, name: str) -> str:
        head = self._heads.get(name)
        if head is None:
            head = "data: " + self._json.encode({"event": name, **self._envelope, "task_id": self._task_id})[:-1]
            self._heads[name] = head
        return head

    def event(self, name: str, fields: dict[str, Any]) -> bytes:
        """A data event: envelope, task_id, then `fields` in order."""
        if not fields:
            return (self._head(name) + "}\n\n").encode()
        return (self._head(name) + self._sep + self._json.encode(fields)[1:] + "\n\n").encode()

    def error(self, code: str, status: int, message: str) -> bytes:
        """The terminal `error` event, which carries no task_id."""
        body = {"event": "error", **self._envelope, "code": code, "status": status, "message": message}
        return ("data: " + self._json.encode(body) + "\n\n").encode()

    def text_template(self, name: str, fields: dict[str, Any], slot: tuple[str, ...]) -> Callable[[str], bytes]:
        """A fast encoder for text events: `slot` is the key path inside `fields` of the delta.

        The event is encoded once with a marker at the slot; each call then only
        encodes the delta string and joins it between the two fixed halves.
        """
        marked = _with_slot(fields, slot)
        before, after = self.event(name, marked).decode().split(self._json.encode(_SLOT))
        encode = self._json.encode

        def render(text: str) -> bytes:
            return (before + encode(text) + after).encode()

        return render


def _with_slot(fields: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    copy = dict(fields)
    if len(path) == 1:
        copy[path[0]] = _SLOT
    else:
        copy[path[0]] = _with_slot(copy[path[0]], path[1:])
    return copy


def split_for_wire(data: bytes) -> list[bytes]:
    """Cut one write into small pieces: inside the first line, inside multi-byte
    UTF-8 characters, in the middle, and between the two final newlines."""
    size = len(data)
    if size < 2:
        return [data]
    cuts = {min(3, size - 1), size // 2}
    lead_bytes = [i for i, byte in enumerate(data) if byte >= 0xC0]
    for i in lead_bytes[:1] + lead_bytes[-1:]:
        cuts.add(i + 1)
    if data.endswith(b"\n\n"):
        cuts.add(size - 1)
    bounds = [0, *sorted(c for c in cuts if 0 < c < size), size]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
