"""Conversation and message history endpoints (docs/dify.md 10), chat-family apps only."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from .apps import CHAT_MODES, App
from .errors import invalid_param, json_response, not_chat_app, not_found
from .store import Conversation, Message, State
from .validation import read_json_body

DEFAULT_USER = "DEFAULT-USER"
_SORTS = {"created_at", "-created_at", "updated_at", "-updated_at"}


def _require_chat(app: App) -> None:
    if app.mode not in CHAT_MODES:
        raise not_chat_app()


def _limit() -> int:
    raw = request.args.get("limit", "20")
    try:
        limit = int(raw)
    except ValueError:
        raise invalid_param("limit must be an integer between 1 and 100") from None
    if not 1 <= limit <= 100:
        raise invalid_param("limit must be an integer between 1 and 100")
    return limit


def conversation_body(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "name": conversation.name,
        "inputs": conversation.inputs,
        "status": "normal",
        "introduction": "",
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }


def list_conversations(state: State, app: App) -> Response:
    """GET /v1/conversations?user=&last_id=&limit=&sort_by=."""
    _require_chat(app)
    user = request.args.get("user") or DEFAULT_USER
    limit = _limit()
    sort_by = request.args.get("sort_by", "-updated_at")
    if sort_by not in _SORTS:
        raise invalid_param(f"sort_by must be one of {sorted(_SORTS)}")
    conversations = state.user_conversations(app.key, user)
    conversations.sort(key=lambda c: getattr(c, sort_by.lstrip("-")), reverse=sort_by.startswith("-"))
    last_id = request.args.get("last_id")
    if last_id:
        position = next((i for i, c in enumerate(conversations) if c.id == last_id), None)
        if position is None:
            raise not_found("Last Conversation Not Exists.")
        conversations = conversations[position + 1 :]
    page = conversations[:limit]
    body = {"limit": limit, "has_more": len(conversations) > limit, "data": [conversation_body(c) for c in page]}
    return json_response(body)


def _owned_conversation(state: State, app: App, user: str, conversation_id: str) -> Conversation:
    conversation = state.find_conversation(app.key, user, conversation_id)
    if conversation is None:
        raise not_found()
    return conversation


def delete_conversation(state: State, app: App, conversation_id: str) -> Response:
    """DELETE /v1/conversations/<id>: 204 since 1.13.1, 200 success before."""
    _require_chat(app)
    user = str(read_json_body().get("user") or DEFAULT_USER)
    conversation = _owned_conversation(state, app, user, conversation_id)
    state.delete_conversation(conversation.id)
    if app.profile == "modern":
        return Response(status=204)
    return json_response({"result": "success"})


def rename_conversation(state: State, app: App, conversation_id: str) -> Response:
    """POST /v1/conversations/<id>/name."""
    _require_chat(app)
    body = read_json_body()
    user = str(body.get("user") or DEFAULT_USER)
    conversation = _owned_conversation(state, app, user, conversation_id)
    if body.get("auto_generate"):
        first = conversation.messages[0].query if conversation.messages else ""
        conversation.name = first.strip()[:20] or "New conversation"
    else:
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid_param("name is required when auto_generate is false")
        conversation.name = name
    return json_response(conversation_body(conversation))


def message_body(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "parent_message_id": None,
        "inputs": message.inputs,
        "query": message.query,
        "answer": message.answer,
        "message_files": message.files,
        "feedback": None,
        "retriever_resources": [],
        "agent_thoughts": [
            {
                **thought,
                "chain_id": None,
                "message_id": message.id,
                "answer": "",
                "tool_labels": {},
                "created_at": message.created_at,
            }
            for thought in message.agent_thoughts
        ],
        "created_at": message.created_at,
        "message_tokens": message.message_tokens,
        "answer_tokens": message.answer_tokens,
        "total_tokens": message.message_tokens + message.answer_tokens,
        "provider_response_latency": 0.0,
        "total_price": "0",
        "currency": "USD",
        "status": message.status,
        "error": message.error,
        "extra_contents": [],
    }


def list_messages(state: State, app: App) -> Response:
    """GET /v1/messages?conversation_id=&user=&first_id=&limit= (pages go backwards, oldest first inside)."""
    _require_chat(app)
    user = request.args.get("user") or DEFAULT_USER
    conversation_id = request.args.get("conversation_id")
    if not conversation_id:
        raise invalid_param("conversation_id is required")
    limit = _limit()
    conversation = _owned_conversation(state, app, user, conversation_id)
    messages = conversation.messages
    first_id = request.args.get("first_id")
    if first_id:
        position = next((i for i, m in enumerate(messages) if m.id == first_id), None)
        if position is None:
            raise not_found("First Message Not Exists.")
        messages = messages[:position]
    page = messages[-limit:]
    body = {"limit": limit, "has_more": len(messages) > limit, "data": [message_body(m) for m in page]}
    return json_response(body)
