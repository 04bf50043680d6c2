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
