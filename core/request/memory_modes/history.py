"""Mode 1 (history_message): every request is a new Dify conversation whose query holds the
whole history, folded into one readable text (see `fold_history`); a first turn, with no
history yet, is sent as in mode 0.

Mode 2 serves apps without conversations (completion, workflow) this way too; their histories
may hold replies of chat apps with mode 2's zero-width ids, which are cut off before folding
(`strip_ids`), as mode 2 does when it starts over.
"""

from __future__ import annotations

from core.request.memory_modes.base import DifyTurn, Messages, history_query
from core.request.memory_modes.zero_width import without_ids


class HistoryMode:
    number = 1

    def __init__(self, strip_ids: bool = False) -> None:
        """`strip_ids`: cut mode 2's zero-width ids off the assistant turns before folding."""
        self.strip_ids = strip_ids

    def prepare(self, messages: Messages) -> DifyTurn:
        folded = without_ids(messages) if self.strip_ids else messages
        return DifyTurn(query=history_query(folded))  # a new conversation: every file goes along

    def recover(self, messages: Messages) -> DifyTurn:
        return self.prepare(messages)

    def reply_suffix(self, conversation_id: str | None, message_id: str | None, continued: str | None) -> str:
        return ""
