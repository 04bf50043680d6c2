"""The interface every conversation-memory mode implements.

A mode turns the OpenAI `messages` (the whole history, as clients send it) into what one
Dify call needs: the `query` text and the Dify `conversation_id` to continue (None starts a
new conversation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from services.errors import invalid_request
from services.openai_request import INSTRUCTION_ROLES, content_text


@dataclass(frozen=True)
class DifyTurn:
    query: str
    conversation_id: str | None = None


class MemoryMode(Protocol):
    number: int

    def prepare(self, messages: list[dict[str, Any]]) -> DifyTurn: ...


def system_prompt(messages: list[dict[str, Any]]) -> str:
    """All system and developer instructions, in order, separated by blank lines."""
    return "\n\n".join(
        text for message in messages if message["role"] in INSTRUCTION_ROLES
        if (text := content_text(message.get("content")).strip())
    )


def latest_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            text = content_text(message.get("content")).strip()
            if text:
                return text
            break
    raise invalid_request("The last user message must contain text.", param="messages", code="invalid_value")
