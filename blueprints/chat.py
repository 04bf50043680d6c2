"""POST /v1/chat/completions: an OpenAI chat request answered by a Dify chat-family app.

The path, top to bottom: validate the request -> resolve the model to a Dify app -> the
memory mode builds the Dify query and conversation id -> open Dify's event stream -> relay
it as SSE chunks, or assemble one JSON body from the same items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify

from blueprints.edge import read_json
from services.apps import CHAT_MODES
from services.auth import dify_user_for
from services.errors import invalid_request
from services.gateway import current_gateway
from services.openai_request import parse_chat_request
from services.relay import ChatRelay
from services.translate import ERROR, ChatCompletionBuilder, ChunkEncoder, new_completion_id, now

bp = Blueprint("chat", __name__)

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
    if app.mode not in CHAT_MODES:
        raise invalid_request(f"The model `{chat.model}` is a Dify {app.mode} app, which chat completions "
                              "cannot serve yet.", param="model", code="unsupported_app_mode")
    dify_user = dify_user_for(chat.user, g.client_key)
    turn = gateway.memory.prepare(chat.messages)
    payload = {
        "query": turn.query,
        "inputs": {},
        # Always streaming: agent apps reject blocking, and one code path serves both renderings.
        "response_mode": "streaming",
        "user": dify_user,
        "conversation_id": turn.conversation_id or "",
        "auto_generate_name": False,
    }
    response = gateway.dify.open_stream(app.key, "/chat-messages", payload)
    relay = ChatRelay(gateway.dify, app, dify_user, response, gateway.settings.keepalive_interval)
    completion_id, created = new_completion_id(), now()
    if not chat.stream:
        return _assemble(relay, completion_id, created, chat.model)
    try:
        prefetched = relay.prefetch(gateway.settings.first_event_wait)
        if prefetched and prefetched[0][0] == ERROR:
            raise prefetched[0][1]  # Dify failed before the first token: a real HTTP status
    except BaseException:
        relay.close()
        raise
    encoder = ChunkEncoder(completion_id, created, chat.model, chat.include_usage)
    return Response(_stream(relay, encoder, prefetched), status=200, headers=_STREAM_HEADERS,
                    content_type="text/event-stream; charset=utf-8")


def _stream(relay: ChatRelay, encoder: ChunkEncoder, prefetched: list[tuple[str, Any]]) -> Iterator[bytes]:
    try:
        # The role chunk goes out at once: the response headers leave with the first write.
        yield encoder.role() + encoder.render(prefetched)
        for batch in relay.batches():
            yield encoder.render(batch)
    finally:
        relay.close()


def _assemble(relay: ChatRelay, completion_id: str, created: int, model: str) -> Response:
    builder = ChatCompletionBuilder()
    try:
        for batch in relay.batches():
            for kind, value in batch:
                builder.add(kind, value)
    finally:
        relay.close()
    return jsonify(builder.body(completion_id, created, model))
