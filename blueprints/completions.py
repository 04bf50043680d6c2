"""POST /v1/completions (legacy text completion) for every Dify app type.

Each prompt, `n` times over, is one Dify run (chat-family apps: a new conversation each);
choice `i * n + j` belongs to prompt `i`, as clients such as LangChain's `OpenAI.batch`
expect.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from blueprints.chat import new_relay
from blueprints.edge import read_json
from blueprints.event_stream import event_stream
from services.auth import dify_user_for
from services.completion_request import parse_completion_request
from services.dify_calls import dify_payload
from services.gateway import current_gateway
from services.pipeline import OutputPipeline
from services.relay import MergedBatches, prefetch_all, raise_first_refusal
from services.render import ChoiceCollector, TextChunkEncoder, collect, new_id, now, sse_body, text_completion_body
from services.stages import StopSequences
from services.translate import DifyEventTranslator

bp = Blueprint("completions", __name__)


@bp.post("/completions")
def completions() -> Response:
    return answer_completion(read_json())


@bp.post("/engines/<path:model>/completions")  # openai 0.28 with engine=
@bp.post("/openai/deployments/<path:model>/completions")  # Azure-style clients
def completions_for(model: str) -> Response:
    return answer_completion(read_json(), model)


def answer_completion(body: Any, model: str | None = None) -> Response:
    gateway = current_gateway()
    request = parse_completion_request(body, model, gateway.settings.max_choices, gateway.settings.max_prompt_chars)
    app = gateway.registry.resolve(request.model)
    dify_user = dify_user_for(request.user, g.client_key)
    prompts = [prompt for prompt in request.prompts for _ in range(request.n)]
    relays = [
        new_relay(gateway, app, dify_user,
                  dify_payload(app, text=prompt, conversation_id=None, user=dify_user, inputs=request.inputs),
                  DifyEventTranslator(app.mode, file_origin=gateway.dify.origin),
                  OutputPipeline([StopSequences(list(request.stop))] if request.stop else []))
        for prompt in prompts
    ]
    prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    raise_first_refusal(relays, prefetched)
    completion_id, created = new_id("cmpl"), now()

    batches = MergedBatches(relays)

    def close() -> None:
        batches.close()
        for relay in relays:
            relay.close()

    first = [(index, items) for index, items in enumerate(prefetched) if items]
    echoes = prompts if request.echo else [""] * len(prompts)
    if not request.stream:
        collectors = [ChoiceCollector(prefix=echo) for echo in echoes]
        usage = collect(first, batches.next, collectors, close)
        return jsonify(text_completion_body(completion_id, created, request.model, collectors, usage))
    encoders = [TextChunkEncoder(completion_id, created, request.model, index, echo)
                for index, echo in enumerate(echoes)]
    return event_stream(sse_body(batches.next, encoders, request.include_usage, close, first))
