"""Helpers to ask the Dify emulator for a behaviour through a chat message."""

from __future__ import annotations

import json
from typing import Any


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
