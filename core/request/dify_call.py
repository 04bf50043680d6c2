"""The body of the Dify call that runs an app (docs/dify.md 4-6).

Chat-family apps (chat, agent-chat, advanced-chat, agent) take the text as `query` in a
conversation; completion apps take it in an input variable (and `query`); workflow apps
only in an input variable. Every call streams: agent apps refuse blocking, and one code
path serves streamed and assembled answers.
"""

from __future__ import annotations

from typing import Any

from core.apps import DifyApp


def dify_payload(app: DifyApp, *, text: str, conversation_id: str | None, user: str, inputs: dict[str, Any],
                 files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "inputs": app.inputs_for(inputs, text),
        "response_mode": "streaming",
        "user": user,
    }
    if files:
        payload["files"] = files
    if app.mode == "workflow":
        return payload
    payload["query"] = text
    if app.has_conversations:
        payload["conversation_id"] = conversation_id or ""
        # Naming a conversation costs Dify an extra LLM call; the gateway never shows names.
        payload["auto_generate_name"] = False
    return payload
