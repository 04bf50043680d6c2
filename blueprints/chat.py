"""POST /v1/chat/completions: an OpenAI chat request answered by a Dify chat-family app.

The path, top to bottom: validate the request -> resolve the model to a Dify app -> the
memory mode builds the Dify query and conversation id -> open Dify's event stream -> relay
it as SSE chunks, or assemble one JSON body from the same items.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import chain
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from blueprints.edge import read_json
from memory_modes import DifyTurn, MemoryMode
from memory_modes.base import continuation_query
from services.apps import DifyApp
from services.auth import dify_user_for
from services.dify_calls import dify_payload, dify_route
from services.errors import OpenAIError, invalid_request
from services.gateway import Gateway, current_gateway
from services.openai_request import ChatRequest, parse_chat_request
from services.relay import ChatRelay, Item
from services.translate import ERROR, ChatCompletionBuilder, ChunkEncoder, DifyEventTranslator, new_completion_id, now

bp = Blueprint("chat", __name__)

CONVERSATION_HEADER = "X-Dify-Conversation-Id"
_STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx must not buffer the stream
}


@bp.post("/chat/completions")
def chat_completions() -> Response:
    return answer_chat(read_json())


def answer_chat(body: Any, model: str | None = None) -> Response:
    gateway = current_gateway()
    chat = parse_chat_request(body, model)
    app = gateway.registry.resolve(chat.model)
    dify_user = dify_user_for(chat.user, g.client_key)
    memory = gateway.memory if app.has_conversations else gateway.memory_without_conversations
    explicit_id = _requested_conversation_id(body) if app.has_conversations else None
    if explicit_id:
        turn = DifyTurn(query=continuation_query(chat.messages), conversation_id=explicit_id)
    else:
        turn = memory.prepare(chat.messages)
    turn, relay, prefetched = _start_relay(gateway, memory, app, dify_user, chat, turn,
                                           recoverable=not explicit_id)
    completion_id, created = new_completion_id(), now()
    if not chat.stream:
        return _assemble(relay, prefetched, completion_id, created, chat.model, turn)
    encoder = ChunkEncoder(completion_id, created, chat.model, chat.include_usage)
    headers = dict(_STREAM_HEADERS)
    if conversation_id := relay.translator.conversation_id or turn.conversation_id:
        headers[CONVERSATION_HEADER] = conversation_id
    return Response(_stream(relay, encoder, prefetched), status=200, headers=headers,
                    content_type="text/event-stream; charset=utf-8")


def _requested_conversation_id(body: dict[str, Any]) -> str | None:
    """An explicit Dify conversation id: the request header, else the body field."""
    value = request.headers.get(CONVERSATION_HEADER) or body.get("conversation_id")
    if value is not None and not isinstance(value, str):
        raise invalid_request("'conversation_id' must be a string.", param="conversation_id", code="invalid_type")
    return value.strip() if value and value.strip() else None


def _start_relay(gateway: Gateway, memory: MemoryMode, app: DifyApp, dify_user: str, chat: ChatRequest,
                 turn: DifyTurn, recoverable: bool) -> tuple[DifyTurn, ChatRelay, list[Item]]:
    """Call Dify and wait (at most FIRST_EVENT_WAIT) for its first event or refusal."""
    relay, prefetched = _relay(gateway, memory, app, dify_user, chat, turn)
    if turn.conversation_id and _refused(prefetched, 404):
        relay.close()
        if not recoverable:
            raise OpenAIError(404, f"Dify has no conversation `{turn.conversation_id}` for this app and user.",
                              param="conversation_id", code="conversation_not_found")
        # The conversation is gone (another app or user, deleted): start over with the history.
        turn = memory.recover(chat.messages)
        relay, prefetched = _relay(gateway, memory, app, dify_user, chat, turn)
    if prefetched and prefetched[0][0] == ERROR:
        relay.close()
        raise prefetched[0][1]  # Dify failed before the first token: a real HTTP status
    return turn, relay, prefetched


def _relay(gateway: Gateway, memory: MemoryMode, app: DifyApp, dify_user: str, chat: ChatRequest,
           turn: DifyTurn) -> tuple[ChatRelay, list[Item]]:
    payload = dify_payload(app, text=turn.query, conversation_id=turn.conversation_id, user=dify_user,
                           inputs=chat.inputs)
    translator = DifyEventTranslator(app.mode, partial(memory.reply_suffix, turn=turn))
    open_stream = partial(gateway.dify.open_stream, app.key, dify_route(app), payload)
    relay = ChatRelay(gateway.dify, app, dify_user, open_stream, gateway.settings.keepalive_interval, translator)
    try:
        return relay, relay.prefetch(gateway.settings.first_event_wait)
    except BaseException:
        relay.close()
        raise


def _refused(prefetched: list[Item], status: int) -> bool:
    return bool(prefetched) and prefetched[0][0] == ERROR and prefetched[0][1].status == status


def _stream(relay: ChatRelay, encoder: ChunkEncoder, prefetched: list[Item]) -> Iterator[bytes]:
    try:
        # The role chunk goes out at once: the response headers leave with the first write.
        yield encoder.role() + encoder.render(prefetched)
        for batch in relay.batches():
            yield encoder.render(batch)
    finally:
        relay.close()


def _assemble(relay: ChatRelay, prefetched: list[Item], completion_id: str, created: int, model: str,
              turn: DifyTurn) -> Response:
    builder = ChatCompletionBuilder()
    try:
        for batch in chain([prefetched], relay.batches()):
            for kind, value in batch:
                builder.add(kind, value)
    finally:
        relay.close()
    response = jsonify(builder.body(completion_id, created, model))
    if conversation_id := relay.translator.conversation_id or turn.conversation_id:
        response.headers[CONVERSATION_HEADER] = conversation_id
    return response
