"""Conversation memory modes (CONVERSATION_MEMORY_MODE), one module per mode."""

from __future__ import annotations

from memory_modes.base import DifyTurn, MemoryMode
from memory_modes.history import HistoryMode
from memory_modes.stateless import StatelessMode
from memory_modes.zero_width import ZeroWidthMode

__all__ = ["DifyTurn", "MemoryMode", "memory_mode"]

_MODES = {mode.number: mode for mode in (StatelessMode, HistoryMode, ZeroWidthMode)}


def memory_mode(number: int) -> MemoryMode:
    return _MODES[number]()
