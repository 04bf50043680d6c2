"""The per-worker objects every request needs, and the one place a relay is started.

A `Gateway` is built once per worker (openai_to_dify.create_app) and kept on the Flask app;
there is no other global state beyond the Dify client's connection pool and the registry's
cache. A `Caller` is what the web edge learned of who asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config import Settings
from core.apps import DifyApp
from core.request.chat_request import RequestLimits
from core.request.memory_modes import MemoryMode, memory_mode
from core.response.pipeline import OutputPipeline
from core.response.reasoning import AgentThoughts
from core.response.smooth import SmoothPacer
from core.response.translate import DifyEventTranslator
from dify_io.client import DifyClient
from dify_io.registry import AppRegistry
from dify_io.relay import Relay, RelayTiming
from dify_io.run import DifyRun


@dataclass(frozen=True)
class Caller:
    """Who asks, as the web edge knows it."""

    dify_user: str  # the Dify `user` (edge/auth.py): conversations, files and stops belong to it
    conversation_id: str | None = None  # asked for explicitly (X-Dify-Conversation-Id, the body, previous_response_id)
    client_socket: Any = None  # the client's socket, watched while Dify is silent (may be None)
    # previous_response_id: the Dify message the conversation must still end with (Dify continues
    # only from a conversation's newest message).
    continues_message: str | None = None


class Gateway:
    def __init__(self, settings: Settings, dify: DifyClient, registry: AppRegistry) -> None:
        self.settings = settings
        self.dify = dify
        self.registry = registry
        self.limits = RequestLimits(settings.max_choices, settings.max_messages, settings.max_prompt_chars)
        # Completion and workflow apps have no conversations: mode 2 serves them as mode 1.
        self.memory: MemoryMode = memory_mode(settings.conversation_memory_mode,
                                              every_reply=settings.zero_width_id == "every")
        self.memory_without_conversations: MemoryMode = memory_mode(settings.conversation_memory_mode,
                                                                    conversations=False)
        self._timing = RelayTiming(settings.keepalive_interval, settings.stream_deadline)

    def prompts_tools(self, app: DifyApp) -> bool:
        """Whether requests' tools are described to `app` and parsed from its answers
        (TOOL_CALLING, per model TOOL_CALLING_BY_MODEL; a name there may be any form of the app's)."""
        for model, mode in self.settings.tool_calling_by_model:
            found = self.registry.model(model)
            if found is not None and found[1].key == app.key:
                return mode == "prompt"
        return self.settings.tool_calling == "prompt"

    def translator(self, app: DifyApp, *, with_reasoning: bool, json_answer: bool = False) -> DifyEventTranslator:
        """A translator for one run. `with_reasoning`: the rendering carries reasoning and
        citations (chat), so agent thoughts (AGENT_THOUGHTS), workflow progress
        (WORKFLOW_PROGRESS) and the citations field (CITATIONS) go into it; `json_answer`: the
        answer must parse as JSON."""
        citations = self.settings.citations
        if citations == "markdown" and json_answer:
            citations = "off"  # a Sources list after the JSON would keep it from parsing
        if not with_reasoning:  # text completions: only text, so citations only as a Sources list
            return DifyEventTranslator(app.mode, file_origin=self.dify.origin,
                                       citations="markdown" if citations == "markdown" else "off")
        mode = self.settings.agent_thoughts
        thoughts = None if mode == "hidden" else AgentThoughts(mode)
        return DifyEventTranslator(app.mode, thoughts, self.dify.origin, self.settings.workflow_progress, citations)

    def pacer(self, stream: bool) -> SmoothPacer | None:
        """The smooth-output pacer for a stream (SMOOTH_OUTPUT); JSON bodies are not paced."""
        return SmoothPacer(max_lag=self.settings.smooth_max_lag) if stream and self.settings.smooth_output else None

    def relay(self, app: DifyApp, caller: Caller, payload: dict[str, Any], translator: DifyEventTranslator,
              pipeline: OutputPipeline, pacer: SmoothPacer | None = None) -> Relay:
        """Start one Dify run of this request and relay it."""
        return Relay(DifyRun(self.dify, app, caller.dify_user), payload, translator, pipeline, pacer,
                     caller.client_socket, self._timing)
