"""Event sequences per app type (docs/dify.md 4.4-4.7, 5, 6).

A plan knows *what* a stream of its app type contains: the events before the
answer text (`opening`), one text event per delta (`text`), the normal end
(`closing`), the end after a stop (`stopped`), and the mid-stream `error`
event. The runner decides *when* each is sent. The same plans build the
blocking bodies.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .apps import App
from .scenario import Scenario, split_words
from .sse import EventEncoder
from .usage import compute_usage

START_NODE = "1711528914102"
LLM_NODE = "1711528917469"
ANSWER_NODE = "answer"
END_NODE = "1711528919501"

_AUDIO = base64.b64encode(b"ID3\x03\x00\x00\x00\x00\x00\x00emulated mp3 frame").decode()

DEFAULT_AGENT_STEP = {
    "thought": "",
    "tool": "current_time",
    "tool_input": {},
    "observation": "2025-01-01 10:00:00",
}


@dataclass
class RunContext:
    """Everything known about one generation request once it has been validated."""

    app: App
    scenario: Scenario
    user: str
    end_user_id: str
    query: str
    inputs: dict[str, Any]
    deltas: list[str]
    prompt_tokens: int
    conversation_id: str = ""
    dialogue_count: int = 1
    files: list[dict[str, Any]] = field(default_factory=list)
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    workflow_run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.monotonic)
    first_text_at: float | None = None

    @property
    def modern(self) -> bool:
        return self.app.profile == "modern"

    @property
    def compact(self) -> bool:
        """Compact orjson output since 1.8.1 (restx and modern profiles)."""
        return self.app.profile != "legacy"

    @property
    def chatflow_order(self) -> str:
        return self.scenario.chatflow_order or self.app.chatflow_order

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def usage(self, completion_tokens: int, timing: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        first = self.first_text_at or now
        return compute_usage(
            self.prompt_tokens,
            completion_tokens,
            now - self.started,
            timing=(first - self.started, now - first) if timing else None,
            override=self.scenario.usage,
        )


def tts_events(enc: EventEncoder) -> list[bytes]:
    """Text-to-speech audio chunks (a fake MP3 frame) and their end marker."""
    return [enc.event("tts_message", {"audio": _AUDIO}), enc.event("tts_message_end", {"audio": ""})]


def final_answer(ctx: RunContext, sent: list[str]) -> str:
    """What the user ends up seeing: the streamed text, or the message_replace text."""
    if ctx.scenario.message_replace is not None:
        return ctx.scenario.message_replace
    return "".join(sent)


class ChatPlan:
    """Chat and completion apps: `message` x N -> [message_replace] -> message_end -> [tts]."""

    immediate_ping = False
    text_event = "message"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        if ctx.app.mode == "completion":
            envelope: dict[str, Any] = {"message_id": ctx.message_id, "created_at": ctx.created_at}
        else:
            envelope = {
                "conversation_id": ctx.conversation_id,
                "message_id": ctx.message_id,
                "created_at": ctx.created_at,
            }
        self.enc = EventEncoder(envelope, ctx.task_id, ctx.compact)
        self.text = self.enc.text_template(self.text_event, self._text_fields(), ("answer",))

    def _text_fields(self) -> dict[str, Any]:
        return {"id": self.ctx.message_id, "answer": "", "from_variable_selector": [] if self.ctx.modern else None}

    def opening(self) -> list[bytes]:
        return []

    def closing(self, sent: list[str]) -> list[bytes]:
        events = self._replace()
        events.append(self.message_end(sent))
        return events + self._tts()

    def stopped(self, sent: list[str]) -> list[bytes]:
        return [self.message_end(sent)]

    def error(self, code: str, status: int, message: str) -> bytes:
        return self.enc.error(code, status, message)

    def metadata(self, sent: list[str], blocking: bool = False) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        if blocking:
            metadata["annotation_reply"] = None
        metadata["retriever_resources"] = self.ctx.scenario.retriever_resources or []
        metadata["usage"] = self.ctx.usage(len(sent))
        if self.ctx.modern:
            metadata["reasoning"] = {}
        return metadata

    def message_end(self, sent: list[str]) -> bytes:
        fields = {"id": self.ctx.message_id, "metadata": self.metadata(sent), "files": [] if self.ctx.modern else None}
        return self.enc.event("message_end", fields)

    def _replace(self, reason: str = "") -> list[bytes]:
        replacement = self.ctx.scenario.message_replace
        if replacement is None:
            return []
        return [self.enc.event("message_replace", {"answer": replacement, "reason": reason})]

    def _tts(self) -> list[bytes]:
        return tts_events(self.enc) if self.ctx.scenario.tts else []

    def blocking_body(self, sent: list[str]) -> dict[str, Any]:
        """Blocking response of chat, chatflow and completion apps (docs/dify.md 4.2, 5)."""
        ctx = self.ctx
        body: dict[str, Any] = {"event": "message", "task_id": ctx.task_id, "id": ctx.message_id}
        body["message_id"] = ctx.message_id
        if ctx.app.mode != "completion":
            body["conversation_id"] = ctx.conversation_id
        body["mode"] = ctx.app.mode
        body["answer"] = final_answer(ctx, sent)
        body["metadata"] = self.metadata(sent, blocking=True)
        body["created_at"] = ctx.created_at
        return body


class AgentPlan(ChatPlan):
    """agent-chat: agent_thought upserts per iteration (each tool-calling iteration's text first
    as `agent_message` deltas), message_file events for tool files, then the final
    iteration's `agent_message` deltas and message_end."""

    text_event = "agent_message"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        steps = ctx.scenario.agent_steps
        self.steps = [DEFAULT_AGENT_STEP] if steps is None else steps
        self.final_thought_id = str(uuid.uuid4())
        self.thoughts: list[dict[str, Any]] = []

    def _text_fields(self) -> dict[str, Any]:
        return {"id": self.ctx.message_id, "answer": ""}

    def _thought(self, thought_id: str, position: int, **values: Any) -> bytes:
        fields = {
            "id": thought_id,
            "position": position,
            "thought": values.get("thought", ""),
            "observation": values.get("observation", ""),
            "tool": values.get("tool", ""),
            "tool_labels": values.get("tool_labels", {}),
            "tool_input": values.get("tool_input", ""),
            "message_files": values.get("message_files", []),
        }
        return self.enc.event("agent_thought", fields)

    def opening(self) -> list[bytes]:
        events: list[bytes] = []
        for position, step in enumerate(self.steps, 1):
            thought_id = str(uuid.uuid4())
            tool = str(step.get("tool", ""))
            thought = str(step.get("thought", ""))
            tool_input = json.dumps({tool: step.get("tool_input", {})}, ensure_ascii=False) if tool else ""
            observation = json.dumps({tool: step.get("observation", "")}, ensure_ascii=False) if tool else ""
            labels = {tool: {"en_US": tool, "zh_Hans": tool}} if tool else {}
            events.append(self._thought(thought_id, position))
            # The model's text before it calls the tool streams as agent_message (often empty),
            # and the thought repeats it (docs/dify.md 4.6).
            events += [self.text(piece) for piece in split_words(thought) or [""]]
            called = {"thought": thought, "tool": tool, "tool_labels": labels, "tool_input": tool_input}
            events.append(self._thought(thought_id, position, **called))
            file_ids = []
            for spec in step.get("files", []):
                file_id = str(uuid.uuid4())
                file_ids.append(file_id)
                fields = {
                    "id": file_id,
                    "type": spec.get("type", "image"),
                    "belongs_to": "assistant",
                    "url": spec.get("url", f"/files/tools/{file_id}.png"),
                }
                events.append(self.enc.event("message_file", fields))
            events.append(
                self._thought(thought_id, position, observation=observation, message_files=file_ids, **called)
            )
            self.thoughts.append(
                {
                    "id": thought_id,
                    "position": position,
                    "thought": thought,
                    "tool": tool,
                    "tool_input": tool_input,
                    "observation": observation,
                    "files": file_ids,
                }
            )
        events.append(self._thought(self.final_thought_id, len(self.steps) + 1))
        return events

    def closing(self, sent: list[str]) -> list[bytes]:
        answer = "".join(sent)
        self.thoughts.append(
            {
                "id": self.final_thought_id,
                "position": len(self.steps) + 1,
                "thought": answer,
                "tool": "",
                "tool_input": "",
                "observation": "",
                "files": [],
            }
        )
        final = self._thought(self.final_thought_id, len(self.steps) + 1, thought=answer)
        return [final, *super().closing(sent)]


class _WorkflowEvents:
    """Shared workflow and node events of chatflow and workflow plans."""

    ctx: RunContext
    enc: EventEncoder
    _predecessors = {START_NODE: None, LLM_NODE: START_NODE, ANSWER_NODE: LLM_NODE, END_NODE: LLM_NODE}

    def _wf_event(self, name: str, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _system_inputs(self) -> dict[str, Any]:
        raise NotImplementedError

    def workflow_started(self) -> bytes:
        ctx = self.ctx
        data: dict[str, Any] = {
            "id": ctx.workflow_run_id,
            "workflow_id": ctx.app.workflow_id,
            "inputs": self._system_inputs(),
            "created_at": ctx.created_at,
        }
        if ctx.modern:
            data["reason"] = "initial"
        if ctx.app.profile == "legacy":
            data["sequence_number"] = 1
        return self._wf_event("workflow_started", data)

    def _node_base(self, exec_id: str, node_id: str, node_type: str, title: str, index: int) -> dict[str, Any]:
        return {
            "id": exec_id,
            "node_id": node_id,
            "node_type": node_type,
            "title": title,
            "index": index,
            "predecessor_node_id": self._predecessors.get(node_id),
        }

    def node_started(self, exec_id: str, node_id: str, node_type: str, title: str, index: int) -> bytes:
        data = self._node_base(exec_id, node_id, node_type, title, index)
        data.update(
            {
                "inputs": None,
                "inputs_truncated": False,
                "created_at": self.ctx.created_at,
                "extras": {},
                "iteration_id": None,
                "loop_id": None,
                "agent_strategy": None,
            }
        )
        return self._wf_event("node_started", data)

    def node_finished(
        self,
        exec_id: str,
        node: tuple[str, str, str, int],
        *,
        inputs: dict[str, Any] | None,
        outputs: dict[str, Any] | None,
        status: str = "succeeded",
        error: str | None = None,
        tokens: int = 0,
    ) -> bytes:
        node_id, node_type, title, index = node
        data = self._node_base(exec_id, node_id, node_type, title, index)
        metadata = None
        if node_type == "llm":
            price = self.ctx.usage(tokens)["total_price"]
            metadata = {"total_tokens": self.ctx.prompt_tokens + tokens, "total_price": price, "currency": "USD"}
        data.update(
            {
                "inputs": inputs,
                "inputs_truncated": False,
                "process_data": {} if node_type == "llm" else None,
                "process_data_truncated": False,
                "outputs": outputs,
                "outputs_truncated": False,
                "status": status,
                "error": error,
                "elapsed_time": round(self.ctx.elapsed(), 6),
                "execution_metadata": metadata,
                "created_at": self.ctx.created_at,
                "finished_at": int(time.time()),
                "files": [],
                "iteration_id": None,
                "loop_id": None,
            }
        )
        return self._wf_event("node_finished", data)

    def workflow_finished(
        self, status: str, outputs: dict[str, Any] | None, error: str | None, sent: list[str], steps: int
    ) -> bytes:
        ctx = self.ctx
        data = {
            "id": ctx.workflow_run_id,
            "workflow_id": ctx.app.workflow_id,
            "status": status,
            "outputs": outputs,
            "error": error,
            "elapsed_time": round(ctx.elapsed(), 6),
            "total_tokens": ctx.prompt_tokens + len(sent),
            "total_steps": steps,
            "created_by": {"id": ctx.end_user_id, "user": ctx.user},
            "created_at": ctx.created_at,
            "finished_at": int(time.time()),
            "exceptions_count": 0,
            "files": [],
        }
        return self._wf_event("workflow_finished", data)

    def _unsuccessful_end(self, sent: list[str]) -> list[bytes] | None:
        """The closing events of a stopped or failed run (`workflow_status`), None otherwise."""
        status = self.ctx.scenario.workflow_status or "succeeded"
        if status == "stopped":
            return self.stopped(sent)
        if status == "failed":
            error = self.ctx.scenario.workflow_error
            return [self._llm_finished(sent, "failed", error), self.workflow_finished("failed", None, error, sent, 2)]
        return None

    def _graph_opening(self) -> list[bytes]:
        start_inputs = self._system_inputs()
        self.start_exec, self.llm_exec = str(uuid.uuid4()), str(uuid.uuid4())
        return [
            self.workflow_started(),
            self.node_started(self.start_exec, START_NODE, "start", "Start", 1),
            self.node_finished(
                self.start_exec, (START_NODE, "start", "Start", 1), inputs=start_inputs, outputs=start_inputs
            ),
            self.node_started(self.llm_exec, LLM_NODE, "llm", "LLM", 2),
        ]

    def _llm_finished(self, sent: list[str], status: str = "succeeded", error: str | None = None) -> bytes:
        ctx = self.ctx
        outputs = None
        if status == "succeeded":
            outputs = {"text": "".join(sent), "usage": ctx.usage(len(sent)), "finish_reason": "stop"}
        return self.node_finished(
            self.llm_exec,
            (LLM_NODE, "llm", "LLM", 2),
            inputs={},
            outputs=outputs,
            status=status,
            error=error,
            tokens=len(sent),
        )


class ChatflowPlan(_WorkflowEvents, ChatPlan):
    """advanced-chat: ping, workflow_started, start node, LLM node with `message` deltas,
    answer node, then message_end and workflow_finished in the configured order."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.immediate_ping = ctx.chatflow_order != "pre113"
        self.pre113 = ctx.chatflow_order == "pre113"

    def _text_fields(self) -> dict[str, Any]:
        return {"id": self.ctx.message_id, "answer": "", "from_variable_selector": [LLM_NODE, "text"]}

    def _wf_event(self, name: str, data: dict[str, Any]) -> bytes:
        return self.enc.event(name, {"workflow_run_id": self.ctx.workflow_run_id, "data": data})

    def _system_inputs(self) -> dict[str, Any]:
        ctx = self.ctx
        return {
            **ctx.inputs,
            "sys.query": ctx.query,
            "sys.files": ctx.files,
            "sys.user_id": ctx.user,
            "sys.app_id": ctx.app.id,
            "sys.workflow_id": ctx.app.workflow_id,
            "sys.workflow_run_id": ctx.workflow_run_id,
            "sys.dialogue_count": ctx.dialogue_count,
        }

    def metadata(self, sent: list[str], blocking: bool = False) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "annotation_reply": None,
            "retriever_resources": self.ctx.scenario.retriever_resources or [],
            "usage": self.ctx.usage(len(sent), timing=self.ctx.modern),
        }
        if self.ctx.modern:
            metadata["reasoning"] = {}
        return metadata

    def opening(self) -> list[bytes]:
        return self._graph_opening()

    def closing(self, sent: list[str]) -> list[bytes]:
        unsuccessful = self._unsuccessful_end(sent)
        if unsuccessful is not None:
            if self.pre113 and self.ctx.scenario.workflow_status == "failed":
                error = self.ctx.scenario.workflow_error
                unsuccessful.append(self.error("invalid_param", 400, f"Run failed: {error}"))
            return unsuccessful
        answer = final_answer(self.ctx, sent)
        answer_exec = str(uuid.uuid4())
        answer_node = (ANSWER_NODE, "answer", "Answer", 3)
        events = [
            self._llm_finished(sent),
            self.node_started(answer_exec, ANSWER_NODE, "answer", "Answer", 3),
            self.node_finished(answer_exec, answer_node, inputs={}, outputs={"answer": answer}),
            *self._replace("output_moderation"),
        ]
        outputs = self.ctx.scenario.outputs if self.ctx.scenario.outputs is not None else {"answer": answer}
        finished = self.workflow_finished("succeeded", outputs, None, sent, 3)
        if self.pre113:
            return [*events, finished, self.message_end(sent), *self._tts()]
        return [*events, self.message_end(sent), finished]

    def stopped(self, sent: list[str]) -> list[bytes]:
        finished = self.workflow_finished("stopped", {}, None, sent, 2)
        return [finished, self.message_end(sent)] if self.pre113 else [finished]


class WorkflowPlan(_WorkflowEvents):
    """workflow: ping, workflow_started, start node, LLM node with `text_chunk` deltas,
    end node, workflow_finished with the End node's outputs."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.pre113 = ctx.chatflow_order == "pre113"
        self.immediate_ping = not self.pre113
        self.enc = EventEncoder({"workflow_run_id": ctx.workflow_run_id}, ctx.task_id, ctx.compact)
        fields = {"data": {"text": "", "from_variable_selector": [LLM_NODE, "text"]}}
        self.text = self.enc.text_template("text_chunk", fields, ("data", "text"))

    def _wf_event(self, name: str, data: dict[str, Any]) -> bytes:
        return self.enc.event(name, {"data": data})

    def _system_inputs(self) -> dict[str, Any]:
        ctx = self.ctx
        return {
            **ctx.inputs,
            "sys.files": ctx.files,
            "sys.user_id": ctx.user,
            "sys.app_id": ctx.app.id,
            "sys.workflow_id": ctx.app.workflow_id,
            "sys.workflow_run_id": ctx.workflow_run_id,
        }

    def opening(self) -> list[bytes]:
        return self._graph_opening()

    def outputs(self, sent: list[str]) -> dict[str, Any]:
        if self.ctx.scenario.outputs is not None:
            return self.ctx.scenario.outputs
        return {"answer": final_answer(self.ctx, sent)}

    def closing(self, sent: list[str]) -> list[bytes]:
        unsuccessful = self._unsuccessful_end(sent)
        if unsuccessful is not None:
            return unsuccessful
        outputs = self.outputs(sent)
        end_exec = str(uuid.uuid4())
        events = [
            self._llm_finished(sent),
            self.node_started(end_exec, END_NODE, "end", "End", 3),
            self.node_finished(end_exec, (END_NODE, "end", "End", 3), inputs=outputs, outputs=outputs),
        ]
        if self.ctx.scenario.message_replace is not None:
            events.append(self._wf_event("text_replace", {"text": self.ctx.scenario.message_replace}))
        events.append(self.workflow_finished("succeeded", outputs, None, sent, 3))
        if self.pre113 and self.ctx.scenario.tts:
            events += tts_events(self.enc)
        return events

    def stopped(self, sent: list[str]) -> list[bytes]:
        return [self.workflow_finished("stopped", {}, None, sent, 2)]

    def error(self, code: str, status: int, message: str) -> bytes:
        return self.enc.error(code, status, message)

    def blocking_body(self, sent: list[str], status: str, error: str | None) -> dict[str, Any]:
        """Blocking response of workflow apps (docs/dify.md 6); failed runs are still HTTP 200."""
        ctx = self.ctx
        return {
            "task_id": ctx.task_id,
            "workflow_run_id": ctx.workflow_run_id,
            "data": {
                "id": ctx.workflow_run_id,
                "workflow_id": ctx.app.workflow_id,
                "status": status,
                "outputs": self.outputs(sent) if status == "succeeded" else None,
                "error": error,
                "elapsed_time": round(ctx.elapsed(), 6),
                "total_tokens": ctx.prompt_tokens + len(sent),
                "total_steps": 3 if status == "succeeded" else 2,
                "created_at": ctx.created_at,
                "finished_at": int(time.time()),
            },
        }


Plan = ChatPlan | WorkflowPlan


def make_plan(ctx: RunContext) -> Plan:
    """The event plan for the app's mode."""
    mode = ctx.app.mode
    if mode == "agent-chat":
        return AgentPlan(ctx)
    if mode == "advanced-chat":
        return ChatflowPlan(ctx)
    if mode == "workflow":
        return WorkflowPlan(ctx)
    return ChatPlan(ctx)
