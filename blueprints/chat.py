"""POST /v1/chat/completions: an OpenAI chat request answered by a Dify app.

The path, top to bottom: validate the request -> resolve the model to a Dify app -> the
memory mode builds the Dify query and conversation id -> start one Dify stream per choice
-> relay them as SSE chunks, or fold the same items into one JSON body.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from blueprints.edge import read_json
from blueprints.event_stream import event_stream
from memory_modes import DifyTurn, MemoryMode
from memory_modes.base import after_newest_assistant, continuation_query, is_conversation_id
from services.apps import DifyApp
from services.auth import dify_user_for
from services.dify_calls import dify_payload, dify_route
from services.errors import OpenAIError, invalid_request
from services.files import dify_files
from services.gateway import Gateway, current_gateway
from services.openai_request import ChatRequest, check_size, parse_chat_request
from services.pipeline import OutputPipeline, TextStage
from services.reasoning import AgentThoughts, ThinkSplitter
from services.relay import ChatRelay, Item, MergedBatches, prefetch_all, raise_first_refusal
from services.render import (
    ChatChunkEncoder,
    ChoiceCollector,
    chat_completion_body,
    collect,
    new_id,
    now,
    sse_body,
)
from services.smooth import SmoothPacer
from services.stages import JsonAnswer, StopSequences, json_instructions
from services.tool_parser import ToolCallParser
from services.tools import tool_instructions
from services.translate import ERROR, DifyEventTranslator

bp = Blueprint("chat", __name__)

CONVERSATION_HEADER = "X-Dify-Conversation-Id"


@bp.post("/chat/completions")
def chat_completions() -> Response:
    return answer_chat(read_json())


@bp.post("/engines/<path:model>/chat/completions")  # openai 0.28 with engine= / deployment_id=
@bp.post("/openai/deployments/<path:model>/chat/completions")  # Azure-style clients (api-key header)
def chat_completions_for(model: str) -> Response:
    return answer_chat(read_json(), model)


def answer_chat(body: Any, model: str | None = None) -> Response:
    gateway = current_gateway()
    chat = parse_chat_request(body, model, gateway.settings.max_choices)
    check_size(chat.messages, gateway.settings.max_messages, gateway.settings.max_prompt_chars)
    app = gateway.registry.resolve(chat.model)
    dify_user = dify_user_for(chat.user, g.client_key)
    memory = gateway.memory if app.has_conversations else gateway.memory_without_conversations
    turn, recoverable = _first_turn(memory, app, chat, body)
    turn, relays, prefetched = _start(gateway, memory, app, dify_user, chat, turn, recoverable)
    completion_id, created = new_id("chatcmpl"), now()
    conversation_id = relays[0].translator.conversation_id or turn.conversation_id
    headers = {CONVERSATION_HEADER: conversation_id} if conversation_id else {}

    batches = MergedBatches(relays)

    def close() -> None:
        batches.close()
        for relay in relays:
            relay.close()

    first = [(index, items) for index, items in enumerate(prefetched) if items]
    legacy = bool(chat.tools and chat.tools.legacy)
    if not chat.stream:
        collectors = [ChoiceCollector() for _ in relays]
        usage = collect(first, batches.next, collectors, close)
        response = jsonify(chat_completion_body(completion_id, created, chat.model, collectors, usage, legacy))
        response.headers.update(headers)
        return response
    encoders = [ChatChunkEncoder(completion_id, created, chat.model, index, legacy) for index in range(chat.n)]
    return event_stream(sse_body(batches.next, encoders, chat.include_usage, close, first), headers)


def _first_turn(memory: MemoryMode, app: DifyApp, chat: ChatRequest, body: dict[str, Any]) -> tuple[DifyTurn, bool]:
    """The Dify turn to send, and whether a vanished conversation may be replaced."""
    explicit_id = _requested_conversation_id(body) if app.has_conversations else None
    if explicit_id:
        if not is_conversation_id(explicit_id):
            raise conversation_not_found(explicit_id)
        if chat.n > 1:
            raise invalid_request("n > 1 cannot continue one Dify conversation; each choice is a new one.",
                                  param="n", code="invalid_value")
        return DifyTurn(query=continuation_query(chat.messages), conversation_id=explicit_id,
                        files_from=after_newest_assistant(chat.messages)), False
    turn = memory.prepare(chat.messages)
    if chat.n > 1 and turn.conversation_id:
        turn = memory.recover(chat.messages)  # n parallel runs cannot share one conversation
    return turn, True


def _requested_conversation_id(body: dict[str, Any]) -> str | None:
    """An explicit Dify conversation id: the request header, else the body field."""
    value = request.headers.get(CONVERSATION_HEADER) or body.get("conversation_id")
    if value is not None and not isinstance(value, str):
        raise invalid_request("'conversation_id' must be a string.", param="conversation_id", code="invalid_type")
    return value.strip() if value and value.strip() else None


def _start(gateway: Gateway, memory: MemoryMode, app: DifyApp, dify_user: str, chat: ChatRequest, turn: DifyTurn,
           recoverable: bool) -> tuple[DifyTurn, list[ChatRelay], list[list[Item]]]:
    """Start one Dify stream per choice and wait (at most FIRST_EVENT_WAIT) for each one's
    first event or refusal, so a failure before the first token is a real HTTP status."""
    files = _files(gateway, app, dify_user, chat, turn)
    relays = [_relay(gateway, memory, app, dify_user, chat, turn, files) for _ in range(chat.n)]
    prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    if turn.conversation_id and _refused(prefetched[0], 404):
        relays[0].close()
        if not recoverable:
            raise conversation_not_found(turn.conversation_id)
        # The conversation is gone (another app or user, deleted): start over with the history.
        turn = memory.recover(chat.messages)
        relays = [_relay(gateway, memory, app, dify_user, chat, turn, _files(gateway, app, dify_user, chat, turn))]
        prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    raise_first_refusal(relays, prefetched)
    return turn, relays, prefetched


def _files(gateway: Gateway, app: DifyApp, dify_user: str, chat: ChatRequest, turn: DifyTurn) -> list[dict[str, Any]]:
    """Dify file references for the turn's images, documents and audio (uploaded once, even
    for several choices)."""
    upload = partial(gateway.dify.upload, app.key, dify_user)
    return dify_files(chat.messages, turn.files_from, upload, gateway.settings.max_upload_bytes)


def _relay(gateway: Gateway, memory: MemoryMode, app: DifyApp, dify_user: str, chat: ChatRequest,
           turn: DifyTurn, files: list[dict[str, Any]]) -> ChatRelay:
    settings = gateway.settings
    instructions = [turn.query]
    stages: list[TextStage] = [ThinkSplitter(keep_tags=settings.think_tags == "content")]
    if chat.tools:
        instructions.append(tool_instructions(chat.tools))
        stages.append(ToolCallParser(chat.tools))
    if chat.response_format:
        instructions.append(json_instructions(chat.response_format))
        stages.append(JsonAnswer())
    if chat.stop:
        stages.append(StopSequences(list(chat.stop)))
    payload = dify_payload(app, text="\n\n".join(instructions), conversation_id=turn.conversation_id,
                           user=dify_user, inputs=chat.inputs, files=files)
    thoughts = None if settings.agent_thoughts == "hidden" else AgentThoughts(settings.agent_thoughts)
    translator = DifyEventTranslator(app.mode, thoughts, gateway.dify.origin, settings.workflow_progress)
    continued = turn.conversation_id  # (not `turn`: a held stream must not keep the whole prompt)
    pipeline = OutputPipeline(stages, suffix=lambda: memory.reply_suffix(translator.conversation_id, continued))
    pacer = SmoothPacer(max_lag=settings.smooth_max_lag) if chat.stream and settings.smooth_output else None
    return new_relay(gateway, app, dify_user, payload, translator, pipeline, pacer)


def new_relay(gateway: Gateway, app: DifyApp, dify_user: str, payload: dict[str, Any], translator: DifyEventTranslator,
              pipeline: OutputPipeline, pacer: SmoothPacer | None = None) -> ChatRelay:
    """A relay for one Dify run of this request (its client socket is watched: gunicorn's
    workers put it in the WSGI environ)."""
    settings = gateway.settings
    open_stream = partial(gateway.dify.open_stream, app.key, dify_route(app), payload)
    return ChatRelay(gateway.dify, app, dify_user, open_stream, settings.keepalive_interval, translator, pipeline,
                     request.environ.get("gunicorn.socket"), settings.stream_deadline, pacer)


def conversation_not_found(conversation_id: str) -> OpenAIError:
    return OpenAIError(404, f"Dify has no conversation `{conversation_id}` for this app and user.",
                       param="conversation_id", code="conversation_not_found")


def _refused(items: list[Item], status: int) -> bool:
    return bool(items) and items[0][0] == ERROR and items[0][1].status == status
