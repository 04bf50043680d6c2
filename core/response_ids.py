"""Responses API ids that carry their Dify conversation, so that no store is needed.

A response of a chat-family app is `resp_` + the hex of its Dify conversation id + the hex of
its Dify message id. `previous_response_id` is read back into both: any instance continues
the conversation (no state in the gateway), and the message id tells whether the response is
still the newest of its conversation (Dify continues only from there). Responses of other
apps get a random id that names no conversation.
"""

from __future__ import annotations

import re
import uuid

PREFIX = "resp_"
_CARRIER = re.compile(r"resp_([0-9a-f]{32})([0-9a-f]{32})")


def response_id(conversation_id: str | None, message_id: str | None, fallback_id: str) -> str:
    """The id of a response; `fallback_id` (`resp_` and 32 random hex digits) serves when there
    is no conversation."""
    if conversation_id and message_id:
        try:
            return PREFIX + uuid.UUID(conversation_id).hex + uuid.UUID(message_id).hex
        except ValueError:
            pass  # not ids as Dify writes them
    return fallback_id


def continued_ids(previous_response_id: str) -> tuple[str, str] | None:
    """(conversation id, message id) carried by a response id, or None."""
    found = _CARRIER.fullmatch(previous_response_id.strip().lower())
    if found is None:
        return None
    return str(uuid.UUID(found.group(1))), str(uuid.UUID(found.group(2)))
