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
from collections.abc import Callable
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
# The nodes `extra_node_events` adds before the LLM node, and the Human Input node of `pause_for_input`.
AGENT_NODE = "1711528915811"
ITERATION_NODE = "1711528916254"
ITERATION_CODE_NODE = "1711528916254code"
LOOP_NODE = "1711528916730"
LOOP_TEMPLATE_NODE = "1711528916730template"
HUMAN_INPUT_NODE = "1711528918337"

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


def tts_events(enc: EventEncoder, variant: bool | str = True) -> list[bytes]:
    """Text-to-speech audio chunks (a fake MP3 frame) and their end marker; with `end_only`
    the end marker alone, as Dify 0.7-0.8 sent it when no audio was made (tests/dify_streams 0019)."""
    end = enc.event("tts_message_end", {"audio": ""})
    return [end] if variant == "end_only" else [enc.event("tts_message", {"audio": _AUDIO}), end]


def with_audio(text: Callable[[str], bytes], enc: EventEncoder, tts: bool | str) -> Callable[[str], bytes]:
    """`tts: "interleaved"`: a tts_message after every text event, as Dify's TTS publisher
    interleaves audio with the answer (docs/dify.md 4.5)."""
    if tts != "interleaved":
        return text
    audio = enc.event("tts_message", {"audio": _AUDIO})
    return lambda delta: text(delta) + audio


def final_answer(ctx: RunContext, sent: list[str]) -> str:
    """What the user ends up seeing: the streamed text, or the message_replace text."""
    if ctx.scenario.message_replace is not None:
        return ctx.scenario.message_replace
    return "".join(sent)


class ChatPlan:
    """Chat and completion apps: `message` x N -> [message_replace] -> message_end -> [tts]."""

    immediate_ping = False
    text_event = "message"
    pauses = False  # the run stops at a Human Input node (`pause_for_input`, chatflow and workflow)

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
        name = self.text_event
        if ctx.app.message_file_relabel and ctx.files and ctx.app.mode in ("chat", "completion"):
            # Dify 1.11.2-1.12 sent every answer chunk of a message with any file attached, the
            # user's own uploads included, as `message_file` (docs/dify.md 4.5).
            name = "message_file"
        text = self.enc.text_template(name, self._text_fields(), ("answer",))
        self.text = with_audio(text, self.enc, ctx.scenario.tts)

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
        tts = self.ctx.scenario.tts
        return tts_events(self.enc, tts) if tts else []

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


class NewAgentPlan(AgentPlan):
    """agent (New Agent, docs/dify.md 4.6 end): the agent backend's steps as agent_thought rows
    (a thinking row when a step has a thought; a tool row, upserted again with its observation),
    then per answer delta an upsert of the answer row and an `agent_message` delta, then ONE
    closing `message` that repeats the whole answer, then message_end (no citations).

    As Dify's agent_app runner writes them: each row is its own thought id and position, a tool
    row's `tool_input` holds the arguments themselves (not keyed by tool name) and its
    `observation` the tool's output; the answer row is deleted at the end (its text is the final
    answer), so no thought follows the last delta. Step `files` are not emulated."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.closing_message = self.enc.text_template("message", ChatPlan._text_fields(self), ("answer",))
        self.answer_thought_id = str(uuid.uuid4())
        self.position = 1
        agent_message = self.text

        def text(delta: str) -> bytes:
            return self._thought(self.answer_thought_id, self.position) + agent_message(delta)

        self.text = text

    def opening(self) -> list[bytes]:
        events: list[bytes] = []
        for step in self.steps:
            thought = str(step.get("thought", ""))
            if thought:
                thought_id = str(uuid.uuid4())
                events.append(self._thought(thought_id, self.position, thought=thought))
                self._remember(thought_id, thought=thought)
            tool = str(step.get("tool", ""))
            if not tool:
                continue
            thought_id = str(uuid.uuid4())
            tool_input = json.dumps(step.get("tool_input", {}), ensure_ascii=False)
            observation = step.get("observation", "")
            if not isinstance(observation, str):
                observation = json.dumps(observation, ensure_ascii=False)
            called = {"tool": tool, "tool_labels": {tool: {"en_US": tool, "zh_Hans": tool}}, "tool_input": tool_input}
            events.append(self._thought(thought_id, self.position, **called))
            events.append(self._thought(thought_id, self.position, observation=observation, **called))
            self._remember(thought_id, tool=tool, tool_input=tool_input, observation=observation)
        return events

    def _remember(self, thought_id: str, **values: str) -> None:
        fields = {"thought": "", "tool": "", "tool_input": "", "observation": "", **values}
        self.thoughts.append({"id": thought_id, "position": self.position, **fields, "files": []})
        self.position += 1

    def closing(self, sent: list[str]) -> list[bytes]:
        # The runner's final text goes out as one chunk before the end; output moderation's
        # message_replace, if any, follows it (ChatPlan.closing).
        return [self.closing_message("".join(sent)), *ChatPlan.closing(self, sent)]


class _WorkflowEvents:
    """Shared workflow and node events of chatflow and workflow plans."""

    ctx: RunContext
    enc: EventEncoder
    _predecessors = {START_NODE: None, LLM_NODE: START_NODE, ANSWER_NODE: LLM_NODE, END_NODE: LLM_NODE}
    has_message = True  # reasoning_chunk carries the chat message id (null in workflow apps)

    def _wf_event(self, name: str, data: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def _plain_event(self, name: str, data: dict[str, Any]) -> bytes:
        """Events whose Dify class has no `workflow_run_id` of its own (agent_log,
        reasoning_chunk): a workflow app's envelope still adds it, a chatflow's does not."""
        return self.enc.event(name, {"data": data})

    def _system_inputs(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def llm_index(self) -> int:
        """The LLM node's execution index: after the start node, or after the extra nodes."""
        return 8 if self.ctx.scenario.extra_node_events else 2

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

    def node_started(
        self, exec_id: str, node_id: str, node_type: str, title: str, index: int, **scope: str | None
    ) -> bytes:
        """`scope`: `iteration_id` or `loop_id` of a node inside an Iteration or a Loop."""
        data = self._node_base(exec_id, node_id, node_type, title, index)
        data.update(
            {
                "inputs": None,
                "inputs_truncated": False,
                "created_at": self.ctx.created_at,
                "extras": {},
                "iteration_id": scope.get("iteration_id"),
                "loop_id": scope.get("loop_id"),
                "agent_strategy": None,
            }
        )
        return self._wf_event("node_started", data)

    def _node_finished_data(
        self,
        exec_id: str,
        node: tuple[str, str, str, int],
        *,
        inputs: dict[str, Any] | None,
        outputs: dict[str, Any] | None,
        status: str = "succeeded",
        error: str | None = None,
        tokens: int = 0,
        scope: dict[str, str | None] | None = None,
    ) -> dict[str, Any]:
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
                "iteration_id": (scope or {}).get("iteration_id"),
                "loop_id": (scope or {}).get("loop_id"),
            }
        )
        return data

    def node_finished(self, exec_id: str, node: tuple[str, str, str, int], **values: Any) -> bytes:
        """`values`: inputs, outputs (both required), status, error, tokens, scope."""
        return self._wf_event("node_finished", self._node_finished_data(exec_id, node, **values))

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

    def pre_run_failure(self) -> list[bytes]:
        """Dify >= 1.15's synthetic pair for a run that failed before its graph started
        (docs/dify.md 4.4, 4.6; tasks/app_generate/workflow_execute_task.py): no chat envelope,
        `task_id` is the workflow run id, the user's inputs without `sys.*`, then the stream ends."""
        ctx = self.ctx
        run_id = ctx.workflow_run_id
        enc = EventEncoder({}, run_id, ctx.compact)
        now = int(time.time())
        started = {
            "id": run_id,
            "workflow_id": ctx.app.workflow_id,
            "inputs": ctx.inputs,
            "created_at": now,
            "reason": "initial",
        }
        finished = {
            "id": run_id,
            "workflow_id": ctx.app.workflow_id,
            "status": "failed",
            "outputs": None,
            "error": ctx.scenario.pre_run_failure,
            "elapsed_time": 0.0,
            "total_tokens": 0,
            "total_steps": 0,
            "created_by": {},
            "created_at": now,
            "finished_at": now,
            "exceptions_count": 1,
            "files": [],
        }
        return [
            enc.event("workflow_started", {"workflow_run_id": run_id, "data": started}),
            enc.event("workflow_finished", {"workflow_run_id": run_id, "data": finished}),
        ]

    def _unsuccessful_end(self, sent: list[str]) -> list[bytes] | None:
        """The closing events of a stopped or failed run (`workflow_status`), None otherwise."""
        status = self.ctx.scenario.workflow_status or "succeeded"
        if status == "stopped":
            return self.stopped(sent)
        if status == "failed":
            error = self.ctx.scenario.workflow_error
            return [self._llm_finished(sent, "failed", error), self.workflow_finished("failed", None, error, sent, 2)]
        return None

    def stopped(self, sent: list[str]) -> list[bytes]:
        raise NotImplementedError

    def _graph_opening(self) -> list[bytes]:
        start_inputs = self._system_inputs()
        self.start_exec, self.llm_exec = str(uuid.uuid4()), str(uuid.uuid4())
        events = [
            self.workflow_started(),
            self.node_started(self.start_exec, START_NODE, "start", "Start", 1),
            self.node_finished(
                self.start_exec, (START_NODE, "start", "Start", 1), inputs=start_inputs, outputs=start_inputs
            ),
        ]
        if self.ctx.scenario.extra_node_events:
            events += self._extra_nodes()
        events.append(self.node_started(self.llm_exec, LLM_NODE, "llm", "LLM", self.llm_index))
        if self.ctx.scenario.extra_node_events:
            retry = self._node_finished_data(
                self.llm_exec,
                (LLM_NODE, "llm", "LLM", self.llm_index),
                inputs={},
                outputs=None,
                status="retry",
                error="[openai] Error: emulated transient failure (429 Too Many Requests)",
            )
            events.append(self._wf_event("node_retry", {**retry, "retry_index": 1}))
        return events + self._reasoning_chunks()

    def _extra_nodes(self) -> list[bytes]:
        """`extra_node_events`: an Agent node with its agent_log, an Iteration over two items and
        a Loop of one pass, each with a node inside (shapes in docs/dify.md 4.5; container nodes
        get only their iteration_* / loop_* events). Servers up to 1.7 (the `legacy` profile;
        Dify 0.8-1.8 had them) also report the Agent node's parallel branch."""
        legacy = self.ctx.app.profile == "legacy"
        created = self.ctx.created_at
        events: list[bytes] = []
        branch = {
            "parallel_id": str(uuid.uuid4()),
            "parallel_branch_id": AGENT_NODE,
            "parent_parallel_id": None,
            "parent_parallel_start_node_id": None,
            "iteration_id": None,
            "loop_id": None,
        }
        if legacy:
            events.append(self._wf_event("parallel_branch_started", {**branch, "created_at": created}))
        agent_exec, log_id = str(uuid.uuid4()), str(uuid.uuid4())
        events.append(self.node_started(agent_exec, AGENT_NODE, "agent", "Agent", 2))
        for status, data, metadata in (
            ("start", {}, {}),
            ("success", {"output": "searched the web"}, {"elapsed_time": 0.42, "provider": "langgenius/agent"}),
        ):
            log = {
                "node_execution_id": agent_exec,
                "id": log_id,
                "label": "ROUND 1",
                "parent_id": None,
                "error": None,
                "status": status,
                "data": data,
                "metadata": metadata,
                "node_id": AGENT_NODE,
            }
            events.append(self._plain_event("agent_log", log))
        events.append(
            self.node_finished(
                agent_exec, (AGENT_NODE, "agent", "Agent", 2), inputs={}, outputs={"text": "searched the web"}
            )
        )
        if legacy:
            finished = {**branch, "status": "succeeded", "error": None, "created_at": created}
            events.append(self._wf_event("parallel_branch_finished", finished))
        events += self._container(
            ITERATION_NODE, "iteration", "Iteration", 3, (ITERATION_CODE_NODE, "code", "Code"), passes=2
        )
        events += self._container(
            LOOP_NODE, "loop", "Loop", 6, (LOOP_TEMPLATE_NODE, "template-transform", "Template"), passes=1
        )
        return events

    def _container(
        self, node_id: str, kind: str, title: str, index: int, inner: tuple[str, str, str], passes: int
    ) -> list[bytes]:
        """An Iteration or Loop node: `<kind>_started`, per pass `<kind>_next` and the inner
        node's node_started / node_finished, then `<kind>_completed`."""
        exec_id, created = str(uuid.uuid4()), self.ctx.created_at
        head = {"id": exec_id, "node_id": node_id, "node_type": kind, "title": title}
        length_key = "iterator_length" if kind == "iteration" else "loop_length"
        events = [
            self._wf_event(
                f"{kind}_started",
                {
                    **head,
                    "created_at": created,
                    "extras": {},
                    "metadata": {length_key: passes},
                    "inputs": {"iterator_selector": [START_NODE, "items"]} if kind == "iteration" else {},
                    "inputs_truncated": False,
                },
            )
        ]
        outputs = []
        inner_id, inner_type, inner_title = inner
        for number in range(passes):
            step = {**head, "index": number, "created_at": created}
            if kind == "loop":
                step["pre_loop_output"] = None
            events.append(self._wf_event(f"{kind}_next", {**step, "extras": {}}))
            inner_exec, output = str(uuid.uuid4()), f"item {number + 1}"
            scope = {f"{kind}_id": node_id}
            inner_index = index + 1 + number
            events.append(self.node_started(inner_exec, inner_id, inner_type, inner_title, inner_index, **scope))
            events.append(
                self.node_finished(
                    inner_exec,
                    (inner_id, inner_type, inner_title, inner_index),
                    inputs={},
                    outputs={"output": output},
                    scope=scope,
                )
            )
            outputs.append(output)
        events.append(
            self._wf_event(
                f"{kind}_completed",
                {
                    **head,
                    "outputs": {"output": outputs},
                    "outputs_truncated": False,
                    "created_at": created,
                    "extras": {},
                    "inputs": {},
                    "inputs_truncated": False,
                    "status": "succeeded",
                    "error": None,
                    "elapsed_time": round(self.ctx.elapsed(), 6),
                    "total_tokens": 0,
                    "execution_metadata": {},
                    "finished_at": int(time.time()),
                    "steps": passes,
                },
            )
        )
        return events

    def _reasoning_chunks(self) -> list[bytes]:
        """`reasoning`: the LLM node's separated reasoning (Dify >= 1.15), one reasoning_chunk
        per word, then the empty `is_final` marker, before the answer (docs/dify.md 4.5)."""
        reasoning = self.ctx.scenario.reasoning
        if not reasoning:
            return []
        message_id = self.ctx.message_id if self.has_message else None
        pieces = [(piece, False) for piece in split_words(reasoning)] + [("", True)]
        return [
            self._plain_event(
                "reasoning_chunk",
                {"message_id": message_id, "reasoning": piece, "node_id": LLM_NODE, "is_final": final},
            )
            for piece, final in pieces
        ]

    def _llm_finished(self, sent: list[str], status: str = "succeeded", error: str | None = None) -> bytes:
        ctx = self.ctx
        outputs = None
        if status == "succeeded":
            outputs = {"text": "".join(sent), "usage": ctx.usage(len(sent)), "finish_reason": "stop"}
            if ctx.scenario.reasoning:
                outputs["reasoning_content"] = ctx.scenario.reasoning
        return self.node_finished(
            self.llm_exec,
            (LLM_NODE, "llm", "LLM", self.llm_index),
            inputs={},
            outputs=outputs,
            status=status,
            error=error,
            tokens=len(sent),
        )

    # -- a Human Input node pauses the run (`pause_for_input`) ------------------------------

    def pause_reason(self) -> dict[str, Any]:
        """The Human Input form, as `workflow_paused.data.reasons` lists it (HumanInputRequired
        with its form token, approval channels and expiry added)."""
        spec = self.ctx.scenario.pause_for_input or {}
        form_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "dify-emulator-form:" + self.ctx.workflow_run_id))
        return {
            "TYPE": "human_input_required",
            "form_id": form_id,
            "form_content": spec.get("form_content", "Please review the answer.\n{{#$output.comment#}}"),
            "inputs": [{"type": "paragraph", "output_variable_name": "comment", "default": None}],
            "actions": spec.get(
                "actions",
                [
                    {"id": "approve", "title": "Approve", "button_style": "primary"},
                    {"id": "reject", "title": "Reject", "button_style": "default"},
                ],
            ),
            "node_id": HUMAN_INPUT_NODE,
            "node_title": spec.get("node_title", "Human Input"),
            "resolved_default_values": {},
            "form_token": form_id.replace("-", "")[:22],
            "approval_channels": [],
            "expiration_time": self.ctx.created_at + 36 * 3600,  # the node's default timeout, 36 hours
        }

    def _pause_totals(self, sent: list[str]) -> dict[str, Any]:
        return {
            "elapsed_time": round(self.ctx.elapsed(), 6),
            "total_tokens": self.ctx.prompt_tokens + len(sent),
            "total_steps": self.llm_index + 1,
        }

    def _paused_end(self, sent: list[str]) -> list[bytes]:
        """The LLM node ends, the Human Input node starts and pauses, then human_input_required
        and workflow_paused, which ends the stream (docs/dify.md 4.5 "Human input", >= 1.13:
        nothing follows, not even a message_end)."""
        reason = self.pause_reason()
        title, index, human_exec = reason["node_title"], self.llm_index + 1, str(uuid.uuid4())
        required = {
            key: reason[key] for key in ("form_id", "node_id", "node_title", "form_content", "inputs", "actions")
        }
        required.update(
            display_in_ui=True,
            form_token=reason["form_token"],
            approval_channels=[],
            resolved_default_values={},
            expiration_time=reason["expiration_time"],
        )
        paused = {
            "workflow_run_id": self.ctx.workflow_run_id,
            "paused_nodes": [HUMAN_INPUT_NODE],
            "outputs": {},
            "reasons": [reason],
            "status": "paused",
            "created_at": self.ctx.created_at,
            **self._pause_totals(sent),
        }
        return [
            self._llm_finished(sent),
            self.node_started(human_exec, HUMAN_INPUT_NODE, "human-input", title, index),
            self.node_finished(
                human_exec, (HUMAN_INPUT_NODE, "human-input", title, index), inputs=None, outputs=None, status="paused"
            ),
            self._wf_event("human_input_required", required),
            self._wf_event("workflow_paused", paused),
        ]


class ChatflowPlan(_WorkflowEvents, ChatPlan):
    """advanced-chat: ping, workflow_started, start node, LLM node with `message` deltas,
    answer node, then message_end and workflow_finished in the configured order."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.immediate_ping = ctx.chatflow_order != "pre113"
        self.pre113 = ctx.chatflow_order == "pre113"
        self.pauses = ctx.scenario.pause_for_input is not None

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
            reasoning = self.ctx.scenario.reasoning
            metadata["reasoning"] = {LLM_NODE: reasoning} if reasoning else {}
        return metadata

    def opening(self) -> list[bytes]:
        return self._graph_opening()

    def closing(self, sent: list[str]) -> list[bytes]:
        if self.pauses:
            return self._paused_end(sent)
        unsuccessful = self._unsuccessful_end(sent)
        if unsuccessful is not None:
            if self.pre113 and self.ctx.scenario.workflow_status == "failed":
                error = self.ctx.scenario.workflow_error
                unsuccessful.append(self.error("invalid_param", 400, f"Run failed: {error}"))
            return unsuccessful
        answer = final_answer(self.ctx, sent)
        answer_exec = str(uuid.uuid4())
        answer_node = (ANSWER_NODE, "answer", "Answer", self.llm_index + 1)
        events = [
            self._llm_finished(sent),
            self.node_started(answer_exec, ANSWER_NODE, "answer", "Answer", self.llm_index + 1),
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

    def paused_blocking_body(self, sent: list[str]) -> dict[str, Any]:
        """A blocking chatflow call that paused (docs/dify.md 4.2): the answer so far and the pause."""
        ctx = self.ctx
        answer, metadata = final_answer(ctx, sent), self.metadata(sent, blocking=True)
        data = {
            "id": ctx.message_id,
            "mode": ctx.app.mode,
            "conversation_id": ctx.conversation_id,
            "message_id": ctx.message_id,
            "workflow_run_id": ctx.workflow_run_id,
            "answer": answer,
            "metadata": metadata,
            "created_at": ctx.created_at,
            "paused_nodes": [HUMAN_INPUT_NODE],
            "reasons": [self.pause_reason()],
            "status": "paused",
            **self._pause_totals(sent),
        }
        return {
            "event": "workflow_paused",
            "task_id": ctx.task_id,
            "id": ctx.message_id,
            "message_id": ctx.message_id,
            "conversation_id": ctx.conversation_id,
            "mode": ctx.app.mode,
            "answer": answer,
            "metadata": metadata,
            "created_at": ctx.created_at,
            "workflow_run_id": ctx.workflow_run_id,
            "data": data,
        }


class WorkflowPlan(_WorkflowEvents):
    """workflow: ping, workflow_started, start node, LLM node with `text_chunk` deltas,
    end node, workflow_finished with the End node's outputs."""

    has_message = False

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.pre113 = ctx.chatflow_order == "pre113"
        self.immediate_ping = not self.pre113
        self.pauses = ctx.scenario.pause_for_input is not None
        self.enc = EventEncoder({"workflow_run_id": ctx.workflow_run_id}, ctx.task_id, ctx.compact)
        fields = {"data": {"text": "", "from_variable_selector": [LLM_NODE, "text"]}}
        self.text = with_audio(
            self.enc.text_template("text_chunk", fields, ("data", "text")), self.enc, ctx.scenario.tts
        )

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
        if self.pauses:
            return self._paused_end(sent)
        unsuccessful = self._unsuccessful_end(sent)
        if unsuccessful is not None:
            return unsuccessful
        outputs = self.outputs(sent)
        end_exec = str(uuid.uuid4())
        end_node = (END_NODE, "end", "End", self.llm_index + 1)
        events = [
            self._llm_finished(sent),
            self.node_started(end_exec, END_NODE, "end", "End", self.llm_index + 1),
            self.node_finished(end_exec, end_node, inputs=outputs, outputs=outputs),
        ]
        if self.ctx.scenario.message_replace is not None:
            events.append(self._wf_event("text_replace", {"text": self.ctx.scenario.message_replace}))
        events.append(self.workflow_finished("succeeded", outputs, None, sent, 3))
        if self.pre113 and self.ctx.scenario.tts:
            events += tts_events(self.enc, self.ctx.scenario.tts)
        return events

    def stopped(self, sent: list[str]) -> list[bytes]:
        return [self.workflow_finished("stopped", {}, None, sent, 2)]

    def error(self, code: str, status: int, message: str) -> bytes:
        return self.enc.error(code, status, message)

    def blocking_body(self, sent: list[str], status: str, error: str | None) -> dict[str, Any]:
        """Blocking response of workflow apps (docs/dify.md 6); failed runs are still HTTP 200,
        and a paused run (Human Input) has `finished_at` null, `paused_nodes` and `reasons`."""
        ctx = self.ctx
        data: dict[str, Any] = {
            "id": ctx.workflow_run_id,
            "workflow_id": ctx.app.workflow_id,
            "status": status,
            "outputs": self.outputs(sent) if status == "succeeded" else ({} if status == "paused" else None),
            "error": error,
            "elapsed_time": round(ctx.elapsed(), 6),
            "total_tokens": ctx.prompt_tokens + len(sent),
            "total_steps": 3 if status == "succeeded" else 2,
            "created_at": ctx.created_at,
            "finished_at": int(time.time()),
        }
        if status == "paused":
            data.update(
                total_steps=self.llm_index + 1,
                finished_at=None,
                paused_nodes=[HUMAN_INPUT_NODE],
                reasons=[self.pause_reason()],
            )
        return {"task_id": ctx.task_id, "workflow_run_id": ctx.workflow_run_id, "data": data}


Plan = ChatPlan | WorkflowPlan


def make_plan(ctx: RunContext) -> Plan:
    """The event plan for the app's mode."""
    mode = ctx.app.mode
    if mode == "agent-chat":
        return AgentPlan(ctx)
    if mode == "agent":
        return NewAgentPlan(ctx)
    if mode == "advanced-chat":
        return ChatflowPlan(ctx)
    if mode == "workflow":
        return WorkflowPlan(ctx)
    return ChatPlan(ctx)
