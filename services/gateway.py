"""The per-worker objects a request needs, kept on the Flask app (no other global state)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from config import Settings
from memory_modes import MemoryMode
from services.apps import AppRegistry
from services.dify_client import DifyClient


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    dify: DifyClient
    registry: AppRegistry
    memory: MemoryMode  # for chat-family apps
    memory_without_conversations: MemoryMode  # for completion and workflow apps


def current_gateway() -> Gateway:
    return current_app.extensions["opendify"]
