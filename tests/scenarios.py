"""Helpers to ask the Dify emulator for a behaviour through a chat message, to script the raw
fake Dify (tests/raw_dify.py), and to wait for an event."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tests.raw_dify import sse_events

T = TypeVar("T")

#: How long a test waits for an event before it fails: generous, CI is a loaded 2-core machine.
EVENT_WAIT = 30.0


def directive(**scenario: Any) -> str:
    """Text that makes the emulator follow `scenario` (see dify_emulator's README section)."""
    return "@emulator " + json.dumps(scenario)


def user_message(text: str, **scenario: Any) -> list[dict[str, str]]:
    content = f"{text}\n{directive(**scenario)}" if scenario else text
    return [{"role": "user", "content": content}]


def chat_requests(emulator, path: str = "/v1/chat-messages") -> list[dict[str, Any]]:
    return [record for record in emulator.requests() if record["path"] == path]


def raw_chat_request(body: dict[str, Any], key: str = "sk-opendify-test", close: bool = False) -> bytes:
    """A whole HTTP/1.1 chat-completions request, for tests that drive a raw socket."""
    payload = json.dumps(body).encode()
    headers = [b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1", b"Authorization: Bearer " + key.encode(),
               b"Content-Type: application/json", b"Content-Length: " + str(len(payload)).encode()]
    if close:
        headers.append(b"Connection: close")
    return b"\r\n".join(headers) + b"\r\n\r\n" + payload


def running_dify_answer(words: list[str], pings: int = 0) -> tuple[list[bytes], str]:
    """For `RawDify.answer`: the pieces of a chunked Dify stream whose run is still going (its
    headers, one piece per `message` event of `words`, then `pings` keep-alive pings, and neither
    `message_end` nor the last chunk), and the run's task id."""
    events = [event + b"\n\n" for event in sse_events(words).split(b"\n\n")[:-2]]  # message_end left out
    task_id = json.loads(events[0].removeprefix(b"data: "))["task_id"]
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    return [head, *(b"%x\r\n%s\r\n" % (len(event), event) for event in events + [b"event: ping\n\n"] * pings)], task_id


def wait_for(condition: Callable[[], T], what: str, seconds: float = EVENT_WAIT) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail after `seconds`.

    This waits for an event itself (a record, a state), never for a guessed duration."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)
