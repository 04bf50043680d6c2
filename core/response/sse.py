"""Dify's SSE bytes -> Dify event dicts.

Dify writes one `data: <json>` line per event and a bare `event: ping` line as keep-alive
(docs/dify.md 4.3). Bytes arrive in arbitrary TCP pieces, so lines are split on b"\\n" in
bytes and only whole lines are decoded: a multi-byte character cut across two reads is
never decoded half-way.
"""

from __future__ import annotations

import logging
from typing import Any

import simplejson

log = logging.getLogger(__name__)

PING: dict[str, Any] = {"event": "ping"}

# A single event larger than this is not a Dify answer delta but a fault; refuse to buffer it.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class MalformedStream(Exception):
    """The upstream sent something that cannot be a Dify event stream."""


class SSEDecoder:
    """Incremental decoder: `feed(bytes)` returns the complete events seen so far."""

    __slots__ = ("_pending", "_skipped")

    def __init__(self) -> None:
        self._pending = b""
        self._skipped = 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._pending:
            data = self._pending + data
        lines = data.split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise MalformedStream(f"an upstream event exceeded {MAX_EVENT_BYTES} bytes")
        events = []
        for line in lines:
            if line.startswith(b"data:"):
                event = _decode_data(line[5:])
                if event is not None:
                    events.append(event)
                else:
                    self._skipped += 1
                    if self._skipped == 1:  # once per stream: a broken upstream must not flood the log
                        log.warning("skipped an upstream SSE data line that is not a JSON object (%d bytes)",
                                    len(line))
            elif line.startswith(b"event:") and line[6:].strip() == b"ping":
                events.append(PING)
            # Blank lines, comments and other fields carry nothing Dify uses.
        return events

    def close(self) -> list[dict[str, Any]]:
        """Decode a last line that ended without a newline when the stream closed."""
        rest, self._pending = self._pending, b""
        return self.feed(rest + b"\n") if rest.strip() else []


def _decode_data(payload: bytes) -> dict[str, Any] | None:
    try:
        event = simplejson.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep to decode
        return None
    return event if isinstance(event, dict) else None
