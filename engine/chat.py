"""A chat request -> its Dify runs: one per choice.

The memory mode turns the messages into the Dify turn (query and conversation id); the turn's
files are uploaded once for all choices; tool instructions and the JSON rule are appended to
the query, and the answer's text stages (think tags, tool calls, JSON, stop sequences), the
translator, the pipeline with mode 2's reply suffix, and the pacer are set up per run.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from core.apps import DifyApp
from core.errors import OpenAIError, invalid_request
from core.items import ERROR, Item
from core.request.chat_request import ChatRequest
from core.request.dify_call import dify_payload
from core.request.files import dify_files
from core.request.memory_modes import DifyTurn, MemoryMode
from core.request.memory_modes.base import after_newest_assistant, continuation_query, is_conversation_id
from core.request.tools import tool_instructions
from core.response.pipeline import OutputPipeline, TextStage
from core.response.reasoning import ThinkSplitter
from core.response.stages import JsonAnswer, StopSequences, json_instructions
from core.response.tool_parser import ToolCallParser
from dify_io.relay import Relay, prefetch_all, raise_first_refusal
from engine.answer import Answer

if TYPE_CHECKING:
    from engine.gateway import Caller, Gateway

log = logging.getLogger(__name__)


def start_chat(gateway: Gateway, app: DifyApp, chat: ChatRequest, caller: Caller) -> Answer:
    """Start one Dify run per choice and wait (at most FIRST_EVENT_WAIT) for each one's first
    event or refusal, so a failure before the first token is a real HTTP status."""
    call = ChatCall(gateway, app, chat, caller)
    turn, recoverable = call.first_turn()
    relays = call.relays(turn)
    prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    if turn.conversation_id and _refused(prefetched[0], 404):
        relays[0].close()
        if not recoverable:
            raise conversation_not_found(turn.conversation_id)
        # The conversation is gone (another app or user, deleted): start over with the history.
        turn = call.memory.recover(chat.messages)
        relays = call.relays(turn)
        prefetched = prefetch_all(relays, gateway.settings.first_event_wait)
    raise_first_refusal(relays, prefetched)
    translator = relays[0].translator
    return Answer(relays, prefetched, translator.conversation_id or turn.conversation_id, translator.message_id)


class ChatCall:
    """One chat request on its way to Dify: what every step of planning its runs shares."""

    def __init__(self, gateway: Gateway, app: DifyApp, chat: ChatRequest, caller: Caller) -> None:
        self.gateway = gateway
        self.chat = chat
        self.caller = caller
        self.app = app
        self.memory: MemoryMode = gateway.memory if self.app.has_conversations else gateway.memory_without_conversations
        self.explicit = bool(caller.conversation_id and self.app.has_conversations)  # the client names the conversation
        self.tools = chat.tools if gateway.prompts_tools(self.app) else None
        if chat.tools and not self.tools and chat.tools.choice != "auto":
            param = "function_call" if chat.tools.legacy else "tool_choice"
            raise invalid_request(f"The model `{chat.model}` takes no tools (TOOL_CALLING=off), so '{param}' cannot "
                                  "require a call.", param=param, code="tools_not_supported")

    def first_turn(self) -> tuple[DifyTurn, bool]:
        """The Dify turn to send, and whether a vanished conversation may be replaced."""
        chat, explicit_id = self.chat, self.caller.conversation_id
        if self.explicit:
            if not is_conversation_id(explicit_id):
                raise conversation_not_found(explicit_id)
            if chat.n > 1:
                raise invalid_request("n > 1 cannot continue one Dify conversation; each choice is a new one.",
                                      param="n", code="invalid_value")
            message_id = self.caller.continues_message
            if message_id and self._ends_with(explicit_id, message_id, 0) is False:
                raise invalid_request("previous_response_id is not the newest response of its Dify conversation, and "
                                      "Dify continues a conversation only from its newest message.",
                                      param="previous_response_id", code="previous_response_not_latest")
            return DifyTurn(query=continuation_query(chat.messages), conversation_id=explicit_id,
                            files_from=after_newest_assistant(chat.messages)), False
        turn = self.memory.prepare(chat.messages)
        if turn.conversation_id and (chat.n > 1 or not self._continues(turn)):
            # n parallel runs cannot share one conversation; a history that branched off its
            # conversation (a regenerated answer, an edited turn) cannot continue it.
            turn = self.memory.recover(chat.messages)
        return turn, True

    def _continues(self, turn: DifyTurn) -> bool:
        """Whether the history still ends where its Dify conversation ends: Dify's newest
        messages are the one the history's id came with and as many as the history has
        replies after it. Dify's service API cannot continue from an earlier message (it takes
        no `parent_message_id`, docs/dify.md 4.1), so a history that branched must start over."""
        if turn.expected_tail is None:
            return True  # an id from before message ids were written: trust it
        assert turn.conversation_id is not None
        return bool(self._ends_with(turn.conversation_id, *turn.expected_tail))  # gone (None): start over

    def _ends_with(self, conversation_id: str, message_id: str, replies_after: int) -> bool | None:
        """Whether Dify's newest messages of the conversation are `message_id` and then exactly
        `replies_after` more (GET /messages); None when Dify does not know the conversation.
        When Dify cannot say, the conversation is taken to continue."""
        try:
            newest = self.gateway.dify.newest_message_ids(self.app.key, self.caller.dify_user, conversation_id,
                                                          replies_after + 1)
        except OpenAIError as exc:
            if exc.status == 404:
                return None
            log.warning("could not check conversation %s (%s); continuing it", conversation_id, exc.message)
            return True
        return len(newest) == replies_after + 1 and newest[0] == message_id

    def relays(self, turn: DifyTurn) -> list[Relay]:
        """One started run per choice; the turn's files are uploaded once for all of them."""
        upload = partial(self.gateway.dify.upload, self.app.key, self.caller.dify_user)
        files = dify_files(self.chat.messages, turn.files_from, upload, self.gateway.settings.max_upload_bytes,
                           self.app.allowed_file_types)
        return [self._relay(turn, files) for _ in range(self.chat.n)]

    def _relay(self, turn: DifyTurn, files: list[dict[str, Any]]) -> Relay:
        chat, gateway = self.chat, self.gateway
        instructions = [turn.query]
        stages: list[TextStage] = [ThinkSplitter(keep_tags=gateway.settings.think_tags == "content")]
        if self.tools:
            instructions.append(tool_instructions(self.tools))
            stages.append(ToolCallParser(self.tools))
        if chat.response_format:
            instructions.append(json_instructions(chat.response_format))
            stages.append(JsonAnswer())
        if chat.stop:
            stages.append(StopSequences(list(chat.stop)))
        payload = dify_payload(self.app, text="\n\n".join(instructions), conversation_id=turn.conversation_id,
                               user=self.caller.dify_user, inputs=chat.inputs, files=files)
        translator = gateway.translator(self.app, with_reasoning=True, json_answer=bool(chat.response_format))
        memory, continued = self.memory, turn.conversation_id  # (not `turn`: a held stream must not keep the prompt)
        # An answer that must parse as JSON carries no ids, nor does one in a conversation the client
        # names itself; the X-Dify-Conversation-Id header still does.
        suffix = None if chat.response_format or self.explicit else (
            lambda: memory.reply_suffix(translator.conversation_id, translator.message_id, continued))
        pipeline = OutputPipeline(stages, suffix=suffix)
        return gateway.relay(self.app, self.caller, payload, translator, pipeline, gateway.pacer(chat.stream))


def conversation_not_found(conversation_id: str) -> OpenAIError:
    return OpenAIError(404, f"Dify has no conversation `{conversation_id}` for this app and user.",
                       param="conversation_id", code="conversation_not_found")


def _refused(items: list[Item], status: int) -> bool:
    return bool(items) and items[0][0] == ERROR and items[0][1].status == status
