"""Mode 2 (zero-width): the Dify conversation id travels invisibly inside the chat history.

Each assistant reply ends with zero-width characters that encode the id of its Dify
conversation (ZERO_WIDTH_ID=every, the default: front ends send only the newest messages, so
every reply must carry it) or only the first reply of a conversation does (ZERO_WIDTH_ID=first,
the original OpenDify's behaviour). Clients send the history back on every request, so the id
is found again in the newest assistant message that carries one; Dify then continues that
conversation and gets only the turns after the newest assistant reply.

The encoding is bit-compatible with the original OpenDify: base64 of the id; each base64
character's 6-bit value v becomes the octal digits (v >> 3) & 7 and v & 7 (the padding `=`,
value 64, contributes only its first digit, 0); digit d is written as DIGITS[d].

The gateway also writes the Dify message id of the reply, encoded the same way, before the
conversation id and apart from it by ZERO_WIDTH_SEPARATOR: `<message id><SEP><conversation
id>`. The trailing run is still the conversation id, so the original OpenDify reads these
replies too. The message id shows whether the history still ends where the Dify conversation
ends: a regenerated answer or an edited earlier message branches off it, and Dify's service
API cannot continue from an earlier message (it accepts no `parent_message_id`), so such a
history starts a new conversation with the history folded in (engine/chat.py checks).

Reading the ids back looks only at the last MAX_ID_DIGITS zero-width characters of a run, so
its cost is linear in the message. Front ends in JavaScript often trim() a reply, which strips
U+FEFF (the digit 3) from its end: an id that does not read as a UUID is read again with that
digit put back.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from core.items import ZERO_WIDTH_DIGITS, ZERO_WIDTH_SEPARATOR
from core.request.content import content_text
from core.request.memory_modes.base import (
    DifyTurn,
    Messages,
    after_newest_assistant,
    continuation_query,
    fold_history,
    is_conversation_id,
    last_user_index,
    stateless_query,
)

DIGITS = ZERO_WIDTH_DIGITS
_DIGIT_VALUE = {char: value for value, char in enumerate(DIGITS)}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {char: value for value, char in enumerate(_ALPHABET)}
# Digits in an encoding, modulo 8, by the number of `=` pads: 4k characters of which p are
# padding give 2 * (4k - p) + p digits.
_PADDING_BY_LENGTH = {0: 0, 7: 1, 6: 2}
# The most digits one id is read from (75 bytes): a UUID takes 96 (48 base64 characters).
MAX_ID_DIGITS = 200
# The digit 3, which JavaScript's String.prototype.trim() takes for white space.
_TRIMMED_DIGIT = DIGITS[3]


def encode_id(conversation_id: str) -> str:
    digits = []
    for char in base64.b64encode(conversation_id.encode()).decode():
        if char == "=":
            digits.append(DIGITS[0])
        else:
            value = _B64_VALUE[char]
            digits.append(DIGITS[(value >> 3) & 7])
            digits.append(DIGITS[value & 7])
    return "".join(digits)


def _decode_digits(digits: str) -> str | None:
    padding = _PADDING_BY_LENGTH.get(len(digits) % 8)
    if padding is None:
        return None
    paired = len(digits) - padding
    chars = [_ALPHABET[_DIGIT_VALUE[digits[i]] * 8 + _DIGIT_VALUE[digits[i + 1]]] for i in range(0, paired, 2)]
    try:
        decoded = base64.b64decode("".join(chars) + "=" * padding, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded if decoded.isprintable() and decoded else None


def _readings(run: str, start: int) -> tuple[str, int] | None:
    """The reading of `run` (zero-width digits found at `start`) as an id, or None. A run may
    start with zero-width characters that belong to the text itself, so shorter suffixes of it
    are tried too; Dify's ids are UUIDs, so a reading that is one wins, else the longest."""
    candidates = [(decoded, start + offset) for offset in range(len(run) - 5)
                  if (decoded := _decode_digits(run[offset:]))]
    return next((candidate for candidate in candidates if is_conversation_id(candidate[0])), None) or (
        candidates[0] if candidates else None)


def _trailing_id(text: str, end: int | None = None) -> tuple[str, int] | None:
    """(id, index in `text` where its encoding starts) for the run of zero-width digits that
    ends `text[:end]` (trailing white space allowed), or None.

    Only the last MAX_ID_DIGITS digits of the run are read (Dify's ids, UUIDs, take 96; an id
    of more than 75 bytes is not read), so a long run of zero-width text costs no more than a
    short one: each reading decodes the rest of the run, and there is one per offset.

    When the run does not read as a UUID, it is read again with one U+FEFF (the digit 3) after
    it: JavaScript's trim() strips that character, so a front end that trims
    the reply loses the last digit of an id that ends with it (only the last: an id's digit
    before its last is never 3).
    """
    end = len(text) if end is None else end
    while end > 0 and text[end - 1].isspace():
        end -= 1
    start, limit = end, max(0, end - MAX_ID_DIGITS)
    while start > limit and text[start - 1] in _DIGIT_VALUE:
        start -= 1
    run = text[start:end]
    found = _readings(run, start)
    if found is None or not is_conversation_id(found[0]):
        restored = _readings(run + _TRIMMED_DIGIT, start)
        if restored is not None and is_conversation_id(restored[0]):
            return restored
    return found


def decode_id(text: str) -> str | None:
    """The id encoded at the end of `text`, or None (see `_trailing_id`)."""
    found = _trailing_id(text)
    return found[0] if found else None


def encode_reply_ids(conversation_id: str, message_id: str | None) -> str:
    """What a reply ends with: the message id (when known), the separator, the conversation id."""
    conversation = encode_id(conversation_id)
    return encode_id(message_id) + ZERO_WIDTH_SEPARATOR + conversation if message_id else conversation


def _reply_ids(text: str) -> tuple[str, str | None, int] | None:
    """(conversation id, message id or None, where the ids start) at the end of `text`."""
    found = _trailing_id(text)
    if found is None:
        return None
    conversation_id, start = found
    if start and text[start - 1] == ZERO_WIDTH_SEPARATOR:
        before = _trailing_id(text, start - 1)
        if before is not None and is_conversation_id(before[0]):
            return conversation_id, before[0], before[1]
    return conversation_id, None, start


def without_ids(messages: Messages) -> Messages:
    """The messages with the encoded ids cut off the assistant turns: they are the gateway's
    bookkeeping, not words of the conversation, and must not reach the model when the
    history is folded into a query."""
    cleaned = []
    for message in messages:
        text = content_text(message.get("content")) if message["role"] == "assistant" else ""
        found = _reply_ids(text)
        cleaned.append({**message, "content": text[:found[2]]} if found else message)
    return cleaned


@dataclass(frozen=True)
class FoundConversation:
    conversation_id: str
    message_id: str | None  # the Dify message of the reply that carried the id (None: an older id)
    index: int  # of that reply in the messages


def find_conversation(messages: Messages) -> FoundConversation | None:
    """The newest assistant message that carries a conversation id.

    With ZERO_WIDTH_ID=first, or when a reply deliberately carries none (a JSON answer), the
    newest assistant message that has one need not be the newest assistant message. Dify's
    conversation ids are UUIDs and Dify refuses anything else with a 400, which would fail
    every later turn of the chat (no 404, so no starting over): other readings are not ids.
    """
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message["role"] == "assistant":
            found = _reply_ids(content_text(message.get("content")))
            if found and is_conversation_id(found[0]):
                return FoundConversation(found[0], found[1], index)
    return None


class ZeroWidthMode:
    number = 2

    def __init__(self, every_reply: bool = True) -> None:
        """`every_reply`: ZERO_WIDTH_ID=every (the id on every reply) rather than first."""
        self.every_reply = every_reply

    def prepare(self, messages: Messages) -> DifyTurn:
        found = find_conversation(messages)
        if found is not None:
            # Dify holds every turn up to the newest assistant reply: send what came after.
            replies_after = sum(1 for message in messages[found.index + 1:] if message["role"] == "assistant")
            expected_tail = (found.message_id, replies_after) if found.message_id else None
            return DifyTurn(query=continuation_query(messages), conversation_id=found.conversation_id,
                            files_from=after_newest_assistant(messages), expected_tail=expected_tail)
        if any(message["role"] == "assistant" for message in messages):
            return self.recover(messages)  # a history without an id (started elsewhere)
        return DifyTurn(query=stateless_query(messages), files_from=last_user_index(messages))

    def recover(self, messages: Messages) -> DifyTurn:
        """A new Dify conversation that starts with the whole history folded in."""
        return DifyTurn(query=fold_history(without_ids(messages)))

    def reply_suffix(self, conversation_id: str | None, message_id: str | None, continued: str | None) -> str:
        if conversation_id and (self.every_reply or continued is None):
            return encode_reply_ids(conversation_id, message_id)
        return ""
