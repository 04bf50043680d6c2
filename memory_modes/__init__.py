"""Conversation memory modes (CONVERSATION_MEMORY_MODE), one module per mode."""

from __future__ import annotations

from memory_modes.base import DifyTurn, MemoryMode
from memory_modes.stateless import StatelessMode

__all__ = ["DifyTurn", "MemoryMode", "memory_mode"]


def memory_mode(number: int) -> MemoryMode:
    # Modes 1 and 2 arrive with the conversation-memory work; until then every mode is
    # served statelessly.
    return StatelessMode()
