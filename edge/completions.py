"""POST /v1/completions (legacy text completion) for every Dify app type.

Parse the body, start the Dify runs (engine/text.py), render the answer (edge/respond.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from core.request.completion_request import parse_completion_request
from core.response.render import TextShape
from edge.hooks import read_json
from edge.ids import new_id, now
from edge.respond import respond
from edge.wiring import current_caller, current_gateway, resolve_app
from engine.text import start_text

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
    request = parse_completion_request(body, model, gateway.limits)
    answer = start_text(gateway, resolve_app(request.model), request, current_caller(request.user))
    prompts = request.choice_prompts
    shape = TextShape(new_id("cmpl"), now(), request.model, prompts if request.echo else [""] * len(prompts))
    return respond(answer, shape, request.stream, request.include_usage)
