"""Mode 0: every request is a new Dify conversation; query = system prompt + latest user turn."""

from __future__ import annotations

from typing import Any

from memory_modes.base import DifyTurn, latest_user_text, system_prompt


class StatelessMode:
    number = 0

    def prepare(self, messages: list[dict[str, Any]]) -> DifyTurn:
        instructions = system_prompt(messages)
        question = latest_user_text(messages)
        return DifyTurn(query=f"{instructions}\n\n{question}" if instructions else question)
