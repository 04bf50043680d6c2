"""Mode 1 (history_message): every request is a new Dify conversation whose query holds the
whole history, folded into one readable text (see `fold_history`); a first turn, with no
history yet, is sent as in mode 0."""

from __future__ import annotations

from core.request.memory_modes.base import DifyTurn, Messages, history_query


class HistoryMode:
    number = 1

    def prepare(self, messages: Messages) -> DifyTurn:
        return DifyTurn(query=history_query(messages))  # a new conversation: every file goes along

    def recover(self, messages: Messages) -> DifyTurn:
        return self.prepare(messages)

    def reply_suffix(self, conversation_id: str | None, message_id: str | None, continued: str | None) -> str:
        return ""
