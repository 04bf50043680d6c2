"""Conversation memory modes (CONVERSATION_MEMORY_MODE), one module per mode."""

from __future__ import annotations

from core.request.memory_modes.base import DifyTurn, MemoryMode
from core.request.memory_modes.history import HistoryMode
from core.request.memory_modes.stateless import StatelessMode
from core.request.memory_modes.zero_width import ZeroWidthMode

__all__ = ["DifyTurn", "MemoryMode", "memory_mode"]

def memory_mode(number: int, *, conversations: bool = True, every_reply: bool = True) -> MemoryMode:
    """The mode for CONVERSATION_MEMORY_MODE. Apps without conversations (completion,
    workflow) cannot continue a Dify conversation, so they get mode 1 in place of mode 2, with
    the zero-width ids cut off the replies (they are bookkeeping, not words for the app).
    `every_reply`: ZERO_WIDTH_ID=every (mode 2 writes the id on every reply, not the first)."""
    if number == ZeroWidthMode.number:
        return ZeroWidthMode(every_reply) if conversations else HistoryMode(strip_ids=True)
    return HistoryMode() if number >= HistoryMode.number else StatelessMode()
