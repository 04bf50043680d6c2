"""A legacy text completion -> its Dify runs: each prompt, `n` times over, is one run.

No conversations and no memory mode: the prompt is the whole text. Only stop sequences shape
the answer, and choice `i*n+j` belongs to prompt `i`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.apps import DifyApp
from core.request.completion_request import CompletionRequest
from core.request.dify_call import dify_payload
from core.response.pipeline import OutputPipeline
from core.response.stages import StopSequences
from dify_io.relay import prefetch_all, raise_first_refusal
from engine.answer import Answer

if TYPE_CHECKING:
    from engine.gateway import Caller, Gateway


def start_text(gateway: Gateway, app: DifyApp, request: CompletionRequest, caller: Caller) -> Answer:
    relays = [
        gateway.relay(app, caller,
                      dify_payload(app, text=prompt, conversation_id=None, user=caller.dify_user,
                                   inputs=request.inputs),
                      gateway.translator(app, with_reasoning=False),
                      OutputPipeline([StopSequences(list(request.stop))] if request.stop else []))
        for prompt in request.choice_prompts
    ]
    prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    raise_first_refusal(relays, prefetched)
    return Answer(relays, prefetched)
