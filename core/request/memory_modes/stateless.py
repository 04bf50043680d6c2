"""Mode 0: every request is a new Dify conversation; query = system prompt + latest user turn."""

from __future__ import annotations

from core.request.memory_modes.base import DifyTurn, Messages, last_user_index, stateless_query


class StatelessMode:
    number = 0

    def prepare(self, messages: Messages) -> DifyTurn:
        return DifyTurn(query=stateless_query(messages), files_from=last_user_index(messages))

    def recover(self, messages: Messages) -> DifyTurn:
        return self.prepare(messages)

    def reply_suffix(self, conversation_id: str | None, message_id: str | None, continued: str | None) -> str:
        return ""
