"""The interface every conversation-memory mode implements, and the text forms they share.

A mode turns the OpenAI `messages` (the whole history, as clients send it) into what one
Dify call needs: the `query` text and the Dify `conversation_id` to continue (None starts a
new conversation), and decides what the reply carries back (`reply_suffix`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import invalid_request
from core.request.chat_request import INSTRUCTION_ROLES
from core.request.content import content_text
from core.request.files import FILE_PART_TYPES
from core.request.tools import call_names, render_tool_call_turn, render_tool_result_turn

Messages = list[dict[str, Any]]

# The text of a user turn that holds only files (one, several): the files go with the turn.
FILES_ONLY_QUERY = ("(See the attached file.)", "(See the attached files.)")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def is_conversation_id(value: str) -> bool:
    """Dify's conversation ids are UUIDs; Dify refuses anything else with a 400."""
    return bool(_UUID.fullmatch(value))


@dataclass(frozen=True)
class DifyTurn:
    query: str
    conversation_id: str | None = None
    # The files (images, documents, audio) of the user messages from this index on go with
    # the turn: those of the messages the query covers.
    files_from: int = 0
    # Mode 2, continuing: (the Dify message id the history's id came with, how many replies
    # the history holds after it). The conversation continues only if Dify's newest messages
    # agree; otherwise the history branched off (a regenerated or edited turn).
    expected_tail: tuple[str, int] | None = None


class MemoryMode(Protocol):
    number: int

    def prepare(self, messages: Messages) -> DifyTurn:
        """The Dify turn for this request."""

    def recover(self, messages: Messages) -> DifyTurn:
        """The turn to send instead when Dify no longer knows the conversation (404)."""

    def reply_suffix(self, conversation_id: str | None, message_id: str | None, continued: str | None) -> str:
        """Text appended at the end of the reply (mode 2's invisible ids).
        `conversation_id` and `message_id`: Dify's for this reply; `continued`: the
        conversation the turn continued, None when it started a new one."""


def system_prompt(messages: Messages) -> str:
    """All system and developer instructions, in order, separated by blank lines."""
    return "\n\n".join(
        text for message in messages if message["role"] in INSTRUCTION_ROLES
        if (text := content_text(message.get("content")).strip())
    )


def last_user_index(messages: Messages) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            return index
    raise invalid_request("'messages' must contain a user message.", param="messages", code="invalid_value")


def user_text(message: dict[str, Any]) -> str:
    """A user turn's text; for a turn of files alone (image, file, audio parts), which Dify
    would refuse with an empty query, a short note that points at them (FILES_ONLY_QUERY)."""
    text = content_text(message.get("content")).strip()
    if text:
        return text
    content = message.get("content")
    files = sum(1 for part in content if isinstance(part, dict) and part.get("type") in FILE_PART_TYPES) \
        if isinstance(content, list) else 0
    return FILES_ONLY_QUERY[files > 1] if files else ""


def latest_user_text(messages: Messages) -> str:
    text = user_text(messages[last_user_index(messages)])
    if not text:
        raise invalid_request("The last user message must contain text or a file.", param="messages",
                              code="invalid_value")
    return text


def stateless_query(messages: Messages) -> str:
    """System prompt(s), a blank line, then the latest user turn (mode 0), and the tool calls
    and results that followed it when the client is answering the app's tool calls."""
    instructions = system_prompt(messages)
    blocks = [instructions] if instructions else []
    blocks.append(latest_user_text(messages))
    blocks += _turn_blocks(messages[last_user_index(messages) + 1:], call_names(messages))
    return "\n\n".join(blocks)


def _turn_block(message: dict[str, Any], names: dict[str, str]) -> str:
    """One turn under its role label; tool calls and results in the tool-calling format the
    model was taught (core/request/tools.py), so it recognises its own calls."""
    role = message["role"]
    if role == "user":
        return f"User:\n{user_text(message)}"
    if role == "assistant":
        text = render_tool_call_turn(message).strip()
        return f"Assistant:\n{text}" if text else ""
    if role in ("tool", "function"):
        return render_tool_result_turn(message, names)
    return ""  # system and developer turns are gathered at the top


def _turn_blocks(messages: Messages, names: dict[str, str]) -> list[str]:
    return [block for message in messages if (block := _turn_block(message, names))]


def fold_history(messages: Messages, *, with_system: bool = True) -> str:
    """The whole conversation as one readable query (mode 1; the README shows an example).

    The system prompt comes first, then each earlier turn under its role label, then the
    latest user message under "Current question:", then anything after it (tool calls and
    tool results of the current turn).
    """
    current = last_user_index(messages)
    names = call_names(messages)
    blocks = []
    if with_system and (instructions := system_prompt(messages)):
        blocks.append(f"System:\n{instructions}")
    blocks += _turn_blocks(messages[:current], names)
    blocks.append(f"Current question:\n{latest_user_text(messages)}")
    blocks += _turn_blocks(messages[current + 1:], names)
    return "\n\n".join(blocks)


def history_query(messages: Messages) -> str:
    """The folded history when there is one; a first turn is sent as in mode 0."""
    has_history = any(message["role"] not in INSTRUCTION_ROLES for message in messages[:last_user_index(messages)])
    has_tool_turns = last_user_index(messages) < len(messages) - 1
    return fold_history(messages) if has_history or has_tool_turns else stateless_query(messages)


def after_newest_assistant(messages: Messages) -> int:
    """The index just after the newest assistant message (0 when there is none)."""
    return max((index + 1 for index, message in enumerate(messages) if message["role"] == "assistant"), default=0)


def continuation_query(messages: Messages) -> str:
    """The turns after the newest assistant message, for a Dify conversation that already
    holds everything before it: the user's text alone when that is all there is, the tool
    results alone when the client answers the assistant's tool calls (there is no new user
    turn then, and the last one is already in the conversation)."""
    later = messages[after_newest_assistant(messages):]
    turns = [message for message in later if message["role"] not in INSTRUCTION_ROLES]
    if not turns or (len(turns) == 1 and turns[0]["role"] == "user"):
        return latest_user_text(messages)
    if all(message["role"] != "user" for message in turns):
        return "\n\n".join(_turn_blocks(turns, call_names(messages)))
    return fold_history(later, with_system=False)
