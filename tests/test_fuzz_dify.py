"""Property-based fuzzing of what Dify sends: random event streams, byte for byte, to the real gateway.

tests/test_fuzz.py varies what clients send; here a raw fake Dify (tests/raw_dify.py) answers every
run with a generated event stream and the real gateway (gunicorn, gevent worker) relays it to a
real HTTP client, streamed or as one JSON body. Each app mode (chat, agent-chat, advanced-chat,
agent, completion, workflow: the run route follows it) gets its own examples, each drawing:

- events of every kind the gateway knows (message, agent_message, agent_thought upserts and a whole
  function-calling iteration, message_file with and without answer text, message_replace,
  text_chunk, text_replace, reasoning_chunk, workflow and node events, message_end with usage
  (malformed counts too), workflow_finished succeeded / failed / stopped, error), kinds it does
  not know, `event: ping` lines and ping data events anywhere, comments and other SSE fields,
  invalid JSON lines, events and lines of hundreds of KB, `<think>` tags (an answer with think
  blocks cut across events) and tool-call-like text, odd conversation ids;
- how the stream ends: a terminal event, none (a missing message_end), events after the end, the
  connection cut mid-body, bad chunk framing;
- the framing (chunked, Content-Length, until close), LF or CRLF lines, and the TCP pieces the
  bytes are sent in (cuts inside multi-byte UTF-8 characters and inside CRLF included).

The expected answer comes from the generated steps through a small model of docs/dify.md and
core/response/translate.py (which events carry text for which mode, where an `error`, a terminal
event or the end of the body cuts the answer, message_replace, think tags), and every answer must
keep OpenAI's invariants: a first chunk with delta.role, exactly one finish_reason or exactly one
error event, `data: [DONE]` last, only data lines, blank lines and comments, content and
reasoning_content equal to the model's; without streaming, a `chat.completion` body or an OpenAI
error with the right status. A body that broke off has its Dify task stopped; the worker must not
log a traceback nor be replaced; no answer may hang (the client's read timeout is below the
gateway's keep-alive interval, so a stuck stream fails the example).

Budget: one gateway for every example, SMOOTH_OUTPUT off, 12 examples per mode from fixed seeds,
no example database, no shrinking (the failing example is printed as drawn); the file runs in
about 6 s on two idle cores, 15 s on two busy ones.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import CLIENT_KEY
from tests.gateway_process import GatewayProcess
from tests.raw_dify import RawDify

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MODES = ("chat", "agent-chat", "advanced-chat", "agent", "completion", "workflow")
APP_KEYS = {mode: f"app-fuzz-{mode}" for mode in MODES}
RUN_ROUTES = {"completion": "/v1/completion-messages", "workflow": "/v1/workflows/run"}
STOP_ROUTES = {"completion": "/v1/completion-messages/{}/stop", "workflow": "/v1/workflows/tasks/{}/stop"}
CLIENT_TIMEOUT = (5, 20)  # connect, read: the gateway's keep-alive (60 s) never hides a stuck stream
MARKER = "\u2042"  # only in agent tool names and reasoning_chunk text: that reasoning can be told apart
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
ZERO_USAGE = (0, 0, 0)

# --- answer text ------------------------------------------------------------------------------

# Pieces that stress the text stages: think tags whole and cut, tool-call-like text (no tools are
# requested, so it must pass through unchanged), JSON, multi-byte characters, whitespace. No "<"
# is ever followed by "d": "<details" may open Dify's old reasoning wrapper, which the model leaves out.
ATOMS = ["hello", "w\u00f6rld", "\u4e2d\u6587", "\U0001f600", "\u0928\u092e\u0938\u094d\u0924\u0947", " ", "  ",
         "\n", "\n\n", "\t", "\r\n", "\u2028", "\x00", "\u200b", "x", "<", ">", "<think>", "</think>", "<thi",
         "nk>", "</th", "</", "<b>bold</b>", "&amp;", '"quoted"', "\\", "{", "}",
         '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>',
         '```json\n{"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}\n```',
         '{"name": "f", "arguments": {}}']
texts = st.one_of(
    st.lists(st.sampled_from(ATOMS), max_size=6).map("".join),
    st.text(st.characters(codec="utf-8", exclude_characters="<d" + MARKER), max_size=12),
)


@st.composite
def huge_texts(draw: Callable) -> str:
    """Hundreds of KB of text, cheaply: a short drawn text repeated."""
    piece = draw(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=5).map("".join))
    size = draw(st.integers(100_000, 400_000))
    return (piece * (size // len(piece) + 1))[:size]


def split_think(text: str) -> tuple[str, str, int]:
    """(content, reasoning, held) of an answer under THINK_TAGS=reasoning (docs/clients.md 2.1):
    `<think>...</think>` blocks are reasoning, whitespace after a tag and before a leading
    block is dropped, and an unterminated block is reasoning to the end. `held`: how many of
    the last characters the splitter still holds back before the end (what may still become a
    tag, or whitespace before a possible leading block)."""
    content, reasoning = [], []
    pos, started, inside = 0, False, False
    while True:
        if inside:
            end = text.find("</think>", pos)
            if end < 0:
                reasoning.append(text[pos:])
                return "".join(content), "".join(reasoning), partial_tag(text[pos:], "</think>")
            reasoning.append(text[pos:end])
            pos, inside = end + len("</think>"), False
        else:
            start = text.find("<think>", pos)
            if start < 0:
                rest = text[pos:]
                content.append(rest)
                cut = len(rest) - partial_tag(rest, "<think>")
                whole = not rest[:cut] or (not started and rest[:cut].isspace())
                return "".join(content), "".join(reasoning), len(rest) if whole else len(rest) - cut
            before = text[pos:start]
            if started or not before.isspace():
                content.append(before)
            pos, inside, started = start + len("<think>"), True, True
        while pos < len(text) and text[pos].isspace():  # after a tag
            pos += 1


def partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper prefix of `tag`."""
    return next((size for size in range(min(len(tag) - 1, len(text)), 0, -1) if text.endswith(tag[:size])), 0)


# --- the generated steps ----------------------------------------------------------------------


@dataclass
class Step:
    """One piece of the stream: a Dify event (`event`) or raw SSE lines (`raw`), and what it
    means for the answer (`kind`, `value`), which the model reads instead of the event."""

    kind: str
    event: dict[str, Any] | None = None
    raw: bytes = b""
    value: Any = None

    def describe(self) -> str:
        if self.event is None:
            return f"raw {self.raw[:60]!r}"
        shown = {key: (value[:40] + f"...({len(value)})" if isinstance(value, str) and len(value) > 60 else value)
                 for key, value in self.event.items()}
        return json.dumps(shown, ensure_ascii=False)[:300]


@dataclass
class Scenario:
    mode: str
    steps: list[Step]
    envelope: dict[str, Any]
    line_end: bytes  # b"\n" or b"\r\n"
    data_prefix: bytes  # b"data: " or b"data:"
    ascii_json: bool
    last_newline: bool  # the last line ends with a newline
    framing: str  # chunked, length, close
    ending: str  # clean, cut, malformed
    stream: bool
    include_usage: bool

    def describe(self) -> str:
        head = (f"mode={self.mode} stream={self.stream} usage={self.include_usage} framing={self.framing} "
                f"ending={self.ending} line_end={self.line_end!r} prefix={self.data_prefix!r} "
                f"last_newline={self.last_newline} envelope={self.envelope}")
        return "\n".join([head] + [f"  {step.kind}: {step.describe()}" for step in self.steps])


TEXT_EVENTS = {  # which event names carry answer text, weighted by mode
    "chat": ["message"] * 4 + ["message_file", "agent_message", "tts_answer"],
    "agent-chat": ["agent_message"] * 4 + ["message", "message_file"],
    "agent": ["agent_message"] * 3 + ["message"] * 2 + ["message_file"],
}
SILENT = [
    {"event": "workflow_started", "data": {"id": "run", "workflow_id": "wf", "inputs": {"sys.query": "hi"},
                                           "created_at": 1, "reason": "initial"}},
    {"event": "node_started", "data": {"id": "n1", "node_id": "llm", "node_type": "llm", "title": "LLM",
                                       "index": 1, "inputs": None}},
    {"event": "node_finished", "data": {"id": "n1", "node_id": "llm", "node_type": "llm", "title": "LLM",
                                        "status": "succeeded", "outputs": {"text": "not the answer"},
                                        "error": None, "elapsed_time": 0.1}},
    {"event": "node_finished", "data": {"id": "n2", "node_type": "tool", "status": "failed", "error": "boom"}},
    {"event": "iteration_started", "data": {"id": "it", "node_type": "iteration"}},
    {"event": "loop_next", "data": {"id": "lp", "index": 1, "pre_loop_output": "not the answer"}},
    {"event": "reasoning_chunk", "data": {"reasoning": "", "is_final": True}},
    {"event": "agent_log", "data": {"label": "step", "status": "success"}},
    {"event": "tts_message", "audio": "SUQzBAAAAAAA"},
    {"event": "tts_message_end", "audio": ""},
    {"event": "human_input_required", "data": {"form_id": "f", "node_id": "h"}},
    {"event": "message"},  # no answer at all
    {"event": "message_file", "id": "f0", "type": "image", "belongs_to": "user", "url": "/files/user.png"},
    {"event": "message_file", "id": "f1", "type": "image"},  # no url
    {"event": "brand_new_kind", "data": {"text": "not the answer"}},
    {"event": 7},
    {"no_event": True},
]
NOISE = [b": a comment", b"id: 7", b"retry: 3000", b"event: message", b"event: pingx", b"data: {not json",
         b'data: {"event": "message", "answer": "truncated', b"data: [1, 2]", b'data: "text"', b"data: null",
         b"data:", b"data: \xff\xfe{}", b"data: {}", b"\xef\xbb\xbf: bom"]
# (the event's fields, the HTTP status and the OpenAI code the client gets): core/errors.py.
ERRORS = [
    ({"code": "completion_request_error", "status": 400, "message": "[openai] Error: bad"}, 400,
     "completion_request_error"),
    ({"code": "internal_server_error", "status": 500, "message": "Internal Server Error, please contact support."},
     502, "internal_server_error"),
    ({"code": "rate_limit_error", "status": 429, "message": "Rate limit reached"}, 429, "rate_limit_exceeded"),
    ({"code": "provider_quota_exceeded", "status": 400, "message": "quota"}, 429, "insufficient_quota"),
    ({"code": "invalid_param", "status": 400, "message": "Run failed: node x"}, 400, "invalid_param"),
    ({"code": "not_found", "status": 404, "message": "Conversation Not Exists."}, 404, "not_found"),
    ({"message": "This model's maximum context length is 8192 tokens"}, 400, "context_length_exceeded"),
    ({}, 400, "invalid_request"),
]
# message_end metadata -> the usage the client gets (prompt, completion, total).
USAGES = [
    ({"usage": {"prompt_tokens": 18, "completion_tokens": 3, "total_tokens": 21, "prompt_price": "0.000045",
                "total_price": "0.000075", "currency": "USD", "latency": 0.87}, "retriever_resources": []},
     (18, 3, 21)),
    ({"usage": {"prompt_tokens": 5, "completion_tokens": 2}}, (5, 2, 7)),
    ({"usage": {"prompt_tokens": "4", "completion_tokens": 1.0, "total_tokens": None}}, (4, 1, 5)),
    ({"usage": {"prompt_tokens": "many", "completion_tokens": [3], "total_tokens": "1e3"}}, ZERO_USAGE),
    ({"usage": None}, ZERO_USAGE),
    ({}, ZERO_USAGE),
    (None, ZERO_USAGE),
]
UUID = "45701982-8118-4bc5-8e9b-64562b4555f2"
# Dify's conversation ids are UUIDs; anything else must not reach the X-Dify-Conversation-Id header.
CONVERSATION_IDS = [UUID, UUID, None, "", 123, ["x"], "\u4e2d\u6587", "a\r\nX-Injected: 1"]


def outputs_and_text(draw: Callable) -> tuple[Any, str]:
    """A workflow's `outputs` and the answer the gateway takes from them: `answer`, `text` or
    `output`, else the only string output, else all outputs as JSON (docs/dify.md 6)."""
    text = draw(texts)
    shapes = [
        ({"answer": text, "score": 0.5}, text),
        ({"text": text}, text),
        ({"answer": 5, "output": text}, text),
        ({"result": text, "count": 3}, text),
        ({"a": 1, "b": [True, None]}, json.dumps({"a": 1, "b": [True, None]}, ensure_ascii=False)),
        ({"x": "one", "y": text}, json.dumps({"x": "one", "y": text}, ensure_ascii=False)),
        ({}, ""),
        (None, ""),
    ]
    return draw(st.sampled_from(shapes))


class StepMaker:
    """Draws steps for one example; keeps what later steps depend on (agent thought ids)."""

    def __init__(self, draw: Callable, mode: str, planned: list[str]) -> None:
        self.draw = draw
        self.mode = mode
        self.planned = planned  # pieces of an answer with think blocks, for the first text events
        self.thoughts: list[dict[str, Any]] = []  # agent_thought states, by order of creation
        self.reasonings = 0

    def any(self, terminal_weight: int = 0) -> Step:
        kinds = (["text"] * 6 + ["chunk"] * (5 if self.mode == "workflow" else 1) + ["replace"] * 2 + ["file"]
                 + ["thought"] * (3 if self.mode.startswith("agent") else 1) + ["reasoning"]
                 + ["silent"] * 2 + ["ping"] * 2 + ["noise"] + ["terminal"] * terminal_weight)
        return getattr(self, self.draw(st.sampled_from(kinds)))()

    def answer_piece(self, odd_values: list[Any]) -> Any:
        """The next piece of the planned answer, else a drawn text (or an odd value)."""
        if self.planned:
            return self.planned.pop(0)
        return self.draw(st.one_of(texts, texts, st.sampled_from(odd_values)))

    def text(self, answer: Any = None, name: str | None = None) -> Step:
        name = name or self.draw(st.sampled_from(TEXT_EVENTS.get(self.mode, ["message"] * 5 + ["message_file"])))
        answer = self.answer_piece(["", None, 5, ["x"]]) if answer is None else answer
        event_ = {"event": name, "id": "m1", "answer": answer}
        if name == "message":
            event_["from_variable_selector"] = []
        return Step("text", event_, value=answer)

    def chunk(self, text: Any = None) -> Step:
        text = self.answer_piece(["", None]) if text is None else text
        return Step("chunk", {"event": "text_chunk", "data": {"text": text, "from_variable_selector": ["llm", "text"]}},
                    value=text)

    def replace(self) -> Step:
        text = self.draw(st.one_of(texts, st.just(None)))
        if self.draw(st.booleans()):
            return Step("replace", {"event": "message_replace", "answer": text, "reason": "output_moderation"},
                        value=text or "")
        return Step("replace", {"event": "text_replace", "data": {"text": text}}, value=text or "")

    def file(self) -> Step:
        """message_file: a file made by a tool (a Markdown link), or Dify's relabelled text delta."""
        if self.draw(st.booleans()):
            answer = self.draw(texts)
            return Step("text", {"event": "message_file", "id": "m1", "answer": answer,
                                 "from_variable_selector": []}, value=answer)
        url, kind = self.draw(st.sampled_from([
            ("https://files.example.com/tools/a.png?sign=x", "image"),
            ("/files/tools/b.png?timestamp=1&sign=y", "image"),
            ("/files/tools/c.pdf", "document"),
        ]))
        return Step("file", {"event": "message_file", "id": "f9", "type": kind, "belongs_to": "assistant",
                             "url": url}, value=(url, kind))

    def iteration(self) -> list[Step]:
        """One function-calling iteration as Dify streams it (docs/dify.md 4.6): an empty thought,
        the model's text as agent_message, then the same thought repeating that text, with its
        tool call. The text is on the client's screen already: the reasoning shows only the call."""
        said = self.draw(st.sampled_from(["Let me check the weather.", " I will look it up.\n", "\u4e2d\u6587 x"]))
        number = len(self.thoughts) + 1
        empty = {"event": "agent_thought", "id": f"t{number}", "position": number, "thought": "", "observation": "",
                 "tool": "", "tool_labels": {}, "tool_input": "", "message_files": []}
        return [Step("thought", empty, value=""), self.text(said, "agent_message"), self.thought("call", said)]

    def thought(self, choice: str | None = None, said: str | None = None) -> Step:
        """agent_thought upserts; the value is the reasoning they add (AGENT_THOUGHTS=reasoning).
        `said`: the iteration's agent_message text, which the thought repeats."""
        number = len(self.thoughts) + 1
        open_calls = [state for state in self.thoughts if state["tool"] and not state["answered"]]
        choice = choice or self.draw(st.sampled_from(["plain", "call", "again"] if open_calls else ["plain", "call"]))
        if choice == "plain":  # no tool: the thought may be the final answer, not shown
            event_ = {"event": "agent_thought", "id": f"t{number}", "position": number, "thought": self.draw(texts),
                      "observation": "", "tool": "", "tool_labels": {}, "tool_input": "", "message_files": []}
            self.thoughts.append({"tool": "", "answered": True})
            return Step("thought", event_, value="")
        if choice == "call":
            name = f"lookup{MARKER}{number}"
            args = {"q": self.draw(texts)}
            thought = said or self.draw(st.sampled_from(["", "I should look it up.", "Checking\n"]))
            state = {"id": f"t{number}", "position": number, "tool": name, "thought": thought,
                     "tool_input": json.dumps({name: args}), "answered": False}
            self.thoughts.append(state)
            shown = "" if said else thought + ("\n" if thought and not thought.endswith("\n") else "")
            shown += f"Calling tool {name} with {json.dumps(args, ensure_ascii=False)}\n"
        else:
            state = self.draw(st.sampled_from(open_calls))
            shown = ""
        observation = ""
        if self.draw(st.booleans()):
            result = self.draw(texts)
            observation = json.dumps({state["tool"]: result}, ensure_ascii=False)
            state["answered"] = True
            shown += f"{state['tool']} returned: {result}\n"
        event_ = {"event": "agent_thought", "id": state["id"], "position": state["position"],
                  "thought": state["thought"], "observation": observation, "tool": state["tool"],
                  "tool_labels": {state["tool"]: {"en_US": "Lookup"}}, "tool_input": state["tool_input"],
                  "message_files": []}
        return Step("thought", event_, value=shown)

    def reasoning(self) -> Step:
        """An LLM node's separated reasoning (Dify >= 1.15): reasoning_content, never content."""
        self.reasonings += 1
        text = f"{MARKER}r{self.reasonings} " + self.draw(texts)
        return Step("reasoning", {"event": "reasoning_chunk", "data": {"message_id": "m1", "reasoning": text,
                                                                       "node_id": "llm", "is_final": False}},
                    value=text)

    def silent(self) -> Step:
        return Step("silent", dict(self.draw(st.sampled_from(SILENT))))

    def ping(self) -> Step:
        if self.draw(st.booleans()):
            return Step("ping", {"event": "ping"})
        return Step("ping", raw=self.draw(st.sampled_from([b"event: ping", b"event:ping", b"event: ping "])))

    def noise(self) -> Step:
        return Step("noise", raw=self.draw(st.sampled_from(NOISE)))

    def terminal(self) -> Step:
        usual = ["workflow_finished"] * 4 if self.mode == "workflow" else ["message_end"] * 4
        kind = self.draw(st.sampled_from([*usual, "message_end", "workflow_finished", "error"]))
        if kind == "message_end":
            metadata, usage = self.draw(st.sampled_from(USAGES))
            return Step("end", {"event": "message_end", "id": "m1", "metadata": metadata, "files": []}, value=usage)
        if kind == "error":
            fields, status, code = self.draw(st.sampled_from(ERRORS))
            return Step("error", {"event": "error", **fields}, value=(status, code))
        status = self.draw(st.sampled_from(["succeeded", "succeeded", "failed", "stopped", "partial-succeeded"]))
        outputs, text = outputs_and_text(self.draw)
        total, tokens = self.draw(st.sampled_from([(512, 512), (None, 0), ("7", 7), ("many", 0)]))
        data = {"id": "run", "workflow_id": "wf", "status": status, "outputs": outputs,
                "error": "node x failed" if status == "failed" else None, "elapsed_time": 1.5,
                "total_tokens": total, "total_steps": 3, "exceptions_count": 0, "files": []}
        return Step("workflow_end", {"event": "workflow_finished", "data": data}, value=(status, text, tokens))


# An answer the way reasoning models write it, cut into the pieces of several text events.
planned_answers = st.lists(st.one_of(
    st.sampled_from(["<think>", "</think>", "<think>\n", "\n</think>\n\n", "  <think>", "Let me think.",
                     "The answer is 42.", " ", "<thi", "</th"]),
    texts,
), min_size=1, max_size=10).map("".join)


def cut_text(draw: Callable, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=6), label="text cuts")))
    bounds = [0, *cuts, len(text)]
    return [text[start:end] for start, end in pairwise(bounds) if end > start]


@st.composite
def scenarios(draw: Callable, mode: str) -> Scenario:
    maker = StepMaker(draw, mode, cut_text(draw, draw(planned_answers, label="planned answer")))
    steps = [maker.any(terminal_weight=1) for _ in range(draw(st.sampled_from([0, 2, 4, 7, 10, 14]), label="steps"))]
    # More of some kinds, so that they meet more often; agent thoughts with an id of their own (an
    # upsert of an earlier thought must not land before it: the value of a thought step assumes
    # the thoughts come in the order they were made).
    for kind in ("text", "thought", "chunk" if mode == "workflow" else "file"):
        if draw(st.booleans(), label=f"another {kind}"):
            fresh = draw(st.sampled_from(["call", "plain"]))
            step = maker.thought(fresh) if kind == "thought" else getattr(maker, kind)()
            steps.insert(draw(st.integers(0, len(steps))), step)
    # Rare things are the largest values: Hypothesis starts from the smallest, an ordinary stream.
    if draw(st.integers(0, 2), label="a replacement after text") == 2:  # while the text stages may hold some
        after = [number + 1 for number, step in enumerate(steps) if step.kind in ("text", "chunk")]
        steps.insert(draw(st.sampled_from(after)) if after else 0, maker.replace())
    if draw(st.integers(0, 5), label="huge text") == 5:  # hundreds of KB in one event
        big = draw(huge_texts())
        steps.insert(draw(st.integers(0, len(steps))), maker.chunk(big) if mode == "workflow" else maker.text(big))
    if draw(st.integers(0, 15), label="huge line") == 15:
        steps.insert(draw(st.integers(0, len(steps))), Step("noise", raw=b"data: {" + b"x" * 300_000))
    if mode.startswith("agent") and draw(st.booleans(), label="an agent iteration"):  # its steps stay together
        at = draw(st.integers(0, len(steps)))
        steps[at:at] = maker.iteration()
    if draw(st.integers(0, 7), label="no terminal event") < 7:  # else the stream just ends
        steps.append(maker.terminal())
    steps += [maker.any(terminal_weight=3) for _ in range(draw(st.integers(0, 3)))]  # after the end
    task_id = str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))) if draw(st.integers(0, 5)) < 5 else None
    if mode == "workflow":
        envelope = {"workflow_run_id": "run", "task_id": task_id}
    else:
        envelope = {"conversation_id": draw(st.sampled_from(CONVERSATION_IDS)), "message_id": "m1",
                    "created_at": 1705398420, "task_id": task_id}
        if mode == "completion":
            del envelope["conversation_id"]
    framing = draw(st.sampled_from(["chunked", "chunked", "length", "close"]))
    ending = draw(st.sampled_from(["clean", "cut", "clean", "malformed", "clean", "clean"]))
    ending = {"chunked": ending, "length": ending.replace("malformed", "cut"), "close": "clean"}[framing]
    stream = not draw(st.booleans(), label="not streamed")
    return Scenario(mode=mode, steps=steps, envelope=envelope,
                    line_end=draw(st.sampled_from([b"\n", b"\n", b"\r\n"])),
                    data_prefix=draw(st.sampled_from([b"data: ", b"data: ", b"data:"])),
                    ascii_json=draw(st.booleans()), last_newline=draw(st.integers(0, 4)) < 4,
                    framing=framing, ending=ending,
                    stream=stream, include_usage=stream and draw(st.booleans()))


# --- the wire -----------------------------------------------------------------------------------


def step_bytes(scenario: Scenario, step: Step) -> bytes:
    end = scenario.line_end
    if step.event is None:
        return step.raw + end + end
    event_ = dict(step.event)
    if event_.get("event") != "error":  # error events carry no task_id (docs/dify.md 3.4)
        event_ = {**{key: value for key, value in scenario.envelope.items() if value is not None}, **event_}
    elif "workflow_run_id" in scenario.envelope:
        event_ = {"workflow_run_id": "run", **event_}
    body = json.dumps(event_, ensure_ascii=scenario.ascii_json).encode("utf-8")
    return scenario.data_prefix + body + end + end


@dataclass
class Wire:
    sse: bytes  # the event stream as sent
    ending: str  # clean, cut or malformed (a Content-Length body cut at its very end is clean)
    delivered: int  # how many of its bytes the gateway receives before the body ends or breaks
    line_ends: list[int]  # where each step's first line ends in `sse` (-1: no newline)
    response: bytes  # the whole HTTP response


def wire(scenario: Scenario, draw: Callable) -> Wire:
    pieces = [step_bytes(scenario, step) for step in scenario.steps]
    if pieces and not scenario.last_newline:
        pieces[-1] = pieces[-1].rstrip(b"\r\n")  # the last line ends with the body
    line_ends, position = [], 0
    for piece in pieces:
        newline = piece.find(b"\n")
        line_ends.append(-1 if newline < 0 else position + newline)
        position += len(piece)
    sse = b"".join(pieces)
    ending, delivered = scenario.ending, len(sse)
    if scenario.framing == "length" and ending == "cut" and not sse:
        ending = "clean"  # nothing to cut short
    if ending != "clean":
        shorter = 1 if scenario.framing == "length" else 0  # all of a Content-Length body is a whole body
        delivered = draw(st.integers(0, len(sse) - shorter), label="bytes before the body breaks")
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    if scenario.framing == "chunked":
        body = chunked(sse[:delivered], draw)
        if ending == "clean":
            body += draw(st.sampled_from([b"0\r\n\r\n", b"0;done=1\r\n\r\n", b"0\r\nX-Trailer: 1\r\n\r\n"]))
        elif ending == "malformed":
            body += b"zz\r\nnot a chunk\r\n"
        head += b"Transfer-Encoding: chunked\r\n"
    elif scenario.framing == "length":
        body = sse[:delivered]
        head += b"Content-Length: %d\r\n" % len(sse)
    else:
        body = sse
        head += b"Connection: close\r\n"
    return Wire(sse, ending, delivered, line_ends, head + b"\r\n" + body)


def chunked(body: bytes, draw: Callable) -> bytes:
    """`body` in chunks of drawn sizes (taken in turn, at most 64 chunks, the last takes the
    rest), with size lines in either case and with or without extensions."""
    sizes = draw(st.lists(st.sampled_from([1, 2, 7, 64, 1000, 20_000]), min_size=1, max_size=6), label="chunk sizes")
    upper = draw(st.booleans(), label="upper-case sizes")
    extension = draw(st.sampled_from([b"", b"", b";ext=1", b' ; e="x"']), label="chunk extension")
    out, start = [], 0
    while start < len(body):
        size = sizes[len(out) % len(sizes)] if len(out) < 63 else len(body)
        piece, start = body[start:start + size], start + size
        out.append((b"%X" if upper else b"%x") % len(piece) + extension + b"\r\n" + piece + b"\r\n")
    return b"".join(out)


def tcp_pieces(response: bytes, draw: Callable) -> list[bytes]:
    """The response cut at drawn places: anywhere, inside a CRLF, inside a multi-byte character."""
    inside_crlf = [match.start() + 1 for match in re.finditer(rb"\r\n", response[:200_000])]
    inside_char = [match.start() for match in re.finditer(rb"[\x80-\xbf]", response[:200_000])]
    places = [st.integers(1, max(1, len(response) - 1))]
    places += [st.sampled_from(inside_crlf)] if inside_crlf else []
    places += [st.sampled_from(inside_char)] if inside_char else []
    count = draw(st.sampled_from([0, 2, 6, 12, 20, 30]), label="TCP cuts")
    cuts = sorted({draw(st.one_of(places), label="TCP cut") for _ in range(count)})
    bounds = [0, *cuts, len(response)]
    return [response[start:end] for start, end in pairwise(bounds) if end > start]


# --- the model ------------------------------------------------------------------------------------


@dataclass
class Expected:
    content: str = ""  # streamed content (replacements follow what was streamed)
    body_content: str = ""  # the JSON body's content (the last replacement and what followed it)
    reasoning: str = ""  # think-tag reasoning
    # Reasoning made outside the text stages (agent thoughts, reasoning_chunk), each an item of its own.
    side: list[str] = field(default_factory=list)
    replaced: bool = False
    usage: tuple[int, int, int] = ZERO_USAGE
    error: tuple[int, str] | None = None  # (HTTP status, code)
    committed: bool = False  # something went out before the error: a stream is already 200
    task_id: str | None = None  # what the gateway stops when the body broke before the end

    @property
    def finish_reason(self) -> str:
        return "content_filter" if self.replaced else "stop"

    def close_segment(self, segment: list[str], replaced: bool = False) -> None:
        """Text up to the end, where the text stages give out what they held, or up to a
        replacement, where what they held is dropped with the replaced text."""
        text = "".join(segment)
        segment.clear()
        if replaced:
            text = text[:len(text) - split_think(text)[2]]
        content, reasoning, _ = split_think(text)
        self.content += content
        self.body_content += content
        self.reasoning += reasoning
        self.committed = self.committed or bool(content or reasoning)


def expect(scenario: Scenario, sent: Wire, origin: str) -> Expected:
    """What the client must get, from the steps the gateway received (docs/dify.md 4.5, 4.6, 6)."""
    expected, segment = Expected(), []
    agent_text_seen = text_seen = workflow_ended = False
    answer_so_far = ""  # the answer text given out, which a replacement equal to it leaves alone
    mode = scenario.mode
    for number, (step, line_end) in enumerate(zip(scenario.steps, sent.line_ends, strict=True)):
        # A step counts once its first line is complete; a last line without newline counts
        # when the body ends cleanly (the decoder reads it at the end).
        last = number == len(scenario.steps) - 1
        if not (0 <= line_end < sent.delivered or (last and sent.ending == "clean")):
            break
        if step.event is not None and step.event.get("event") != "error" and scenario.envelope.get("task_id"):
            expected.task_id = expected.task_id or scenario.envelope["task_id"]
        kind, value = step.kind, step.value
        if kind == "text" and value is not None:
            name = step.event["event"]
            if name != "agent_message" and mode == "agent" and agent_text_seen:
                # New Agent repeats the whole answer in a closing `message` (`message_file` once
                # a tool made a file for the answer).
                continue
            if isinstance(value, str) and value:
                agent_text_seen = agent_text_seen or name == "agent_message"
                segment.append(value)
                answer_so_far += value
                text_seen = True
        elif kind == "chunk" and isinstance(value, str) and value:
            segment.append(value)
            answer_so_far += value
            text_seen = True
        elif kind == "file":
            url, file_type = value
            link = f"![image]({origin + url if url.startswith('/') else url})" if file_type == "image" else \
                f"[file]({origin + url if url.startswith('/') else url})"
            segment.append(f"\n\n{link}\n\n")
            text_seen = True
        elif kind == "replace":
            if value == answer_so_far:
                continue  # Dify 1.0-1.2 ends moderated runs with the unchanged answer
            answer_so_far = value
            expected.close_segment(segment, replaced=True)
            expected.content += value
            expected.body_content = value
            expected.replaced = expected.committed = True
        elif kind in ("thought", "reasoning") and value:
            expected.side.append(value)
            expected.committed = True
        elif kind == "end":
            expected.usage = value
            expected.close_segment(segment)
            return expected
        elif kind == "error":
            expected.close_segment(segment)
            expected.error = value
            return expected
        elif kind == "workflow_end":
            status, outputs_text, tokens = value
            if status == "failed":
                expected.close_segment(segment)
                expected.error = (502, "workflow_failed")
                return expected
            # A run stopped in Dify ends as one that succeeded.
            if mode != "workflow":
                workflow_ended = True  # chatflow: message_end (if any) carries the usage
                continue
            if not text_seen and outputs_text:
                segment.append(outputs_text)
            expected.usage = (0, tokens, tokens)
            expected.close_segment(segment)
            return expected
    expected.close_segment(segment)
    if sent.ending == "cut":
        expected.error = (502, "upstream_disconnected")
    elif sent.ending == "malformed":
        expected.error = (502, "upstream_error")
    elif not workflow_ended:
        expected.error = (502, "upstream_incomplete")
    return expected


# --- the checks -----------------------------------------------------------------------------------


def usage_dict(usage: tuple[int, int, int]) -> dict[str, int]:
    return dict(zip(USAGE_KEYS, usage, strict=True))


def assert_envelope(error: Any, code: str) -> None:
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["code"] == code, error


def without_side_items(reasoning: str, side: list[str]) -> str:
    """The reasoning with each item made outside the text stages taken out (each holds MARKER
    and a number, which no other text has, so each occurs once); what is left is the reasoning
    of think tags."""
    for item in side:
        at = reasoning.find(item)
        assert at >= 0, f"reasoning missing: {item!r} in {reasoning[:500]!r}"
        reasoning = reasoning[:at] + reasoning[at + len(item):]
    return reasoning


def check_stream(response: requests.Response, expected: Expected, include_usage: bool) -> None:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("text/event-stream"), response.headers
    text = response.content.decode("utf-8")
    lines = text.split("\n")
    for line in lines:
        assert line == "" or line.startswith("data: ") or line.startswith(": "), f"not an SSE line: {line[:200]!r}"
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    payloads = [json.loads(item) for item in data[:-1]]
    errors = [payload for payload in payloads if "error" in payload]
    chunks = [payload for payload in payloads if "error" not in payload]
    assert chunks and chunks[0]["choices"][0]["delta"].get("role") == "assistant", chunks[:1]
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    if include_usage and expected.error is None:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == [] and usage_chunk["usage"] == usage_dict(expected.usage), usage_chunk
    assert all(len(chunk["choices"]) == 1 and chunk["choices"][0]["index"] == 0 for chunk in chunks), chunks
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"][0]["finish_reason"]]
    if expected.error is not None:
        assert len(errors) == 1 and payloads[-1] is errors[0], errors or payloads[-1:]
        assert_envelope(errors[0]["error"], expected.error[1])
        assert not finishes, finishes
    else:
        assert not errors, errors
        assert finishes == [expected.finish_reason], finishes
        assert chunks[-1]["choices"][0]["finish_reason"], "text after the finish chunk"
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    content = "".join(delta.get("content") or "" for delta in deltas)
    reasoning = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    assert content == expected.content, diff("content", content, expected.content)
    reasoning = without_side_items(reasoning, expected.side)
    assert reasoning == expected.reasoning, diff("reasoning", reasoning, expected.reasoning)


def check_body(response: requests.Response, expected: Expected) -> None:
    if expected.error is not None:
        status, code = expected.error
        assert response.status_code == status, (status, response.status_code, response.text[:500])
        assert response.headers["Content-Type"].startswith("application/json"), response.headers
        body = response.json()
        assert set(body) == {"error"}, body
        assert_envelope(body["error"], code)
        return
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["object"] == "chat.completion" and len(body["choices"]) == 1, body
    choice = body["choices"][0]
    message = choice["message"]
    assert message["role"] == "assistant" and "tool_calls" not in message, message
    assert choice["finish_reason"] == expected.finish_reason, choice
    assert message["content"] == expected.body_content, diff("content", message["content"], expected.body_content)
    reasoning = without_side_items(message.get("reasoning_content") or "", expected.side)
    assert reasoning == expected.reasoning, diff("reasoning", reasoning, expected.reasoning)
    assert "reasoning_content" not in message or message["reasoning_content"], message
    assert body["usage"] == usage_dict(expected.usage), body["usage"]


def diff(what: str, got: str, want: str) -> str:
    at = next((index for index, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return (f"{what} differs at {at} (got {len(got)} chars, expected {len(want)}): "
            f"got {got[max(0, at - 40):at + 60]!r}, expected {want[max(0, at - 40):at + 60]!r}")


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_dify():
    server = RawDify()
    server.apps = {key: {"name": f"fuzz-{mode}", "description": "", "tags": [], "mode": mode, "author_name": "t"}
                   for mode, key in APP_KEYS.items()}
    yield server
    server.close()


@dataclass
class Watched:
    """The gateway under fuzz, its worker and how much of its log was checked."""

    gateway: GatewayProcess
    workers: list[int]
    log_seen: int = 0

    def assert_healthy(self) -> None:
        log = self.gateway.output()
        new, self.log_seen = log[self.log_seen:], len(log)
        for sign in ("Traceback", "WORKER TIMEOUT", "[CRITICAL]", "Worker exiting"):
            assert sign not in new, f"the gateway logged {sign}:\n{new[-3000:]}"
        assert self.gateway.worker_pids() == self.workers, "the worker was replaced"


@pytest.fixture(scope="module")
def fuzz_gateway(raw_dify, start_gateway) -> Watched:
    gateway = start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS=",".join(APP_KEYS.values()),
                            SMOOTH_OUTPUT="off", KEEPALIVE_INTERVAL="60", TIMEOUT="10", THINK_TAGS="reasoning",
                            AGENT_THOUGHTS="reasoning", WORKFLOW_PROGRESS="off", CONVERSATION_MEMORY_MODE="0",
                            CITATIONS="off")
    watched = Watched(gateway, gateway.worker_pids())
    assert len(watched.workers) == 1
    return watched


@pytest.fixture(scope="module")
def session():
    with requests.Session() as http:
        yield http


FUZZ = settings(max_examples=12, deadline=None, database=None, print_blob=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


@pytest.mark.parametrize("mode", MODES)
def test_any_dify_stream_keeps_the_openai_invariants(raw_dify, fuzz_gateway, session, mode):
    """12 examples per app mode (72 in all), each mode from its own fixed seed."""

    @FUZZ
    @seed(MODES.index(mode))
    @given(scenario=scenarios(mode), data=st.data())
    def run(scenario: Scenario, data: st.DataObject) -> None:
        answer_one(raw_dify, fuzz_gateway, session, scenario, data)

    run()


def answer_one(raw_dify: RawDify, fuzz_gateway: Watched, session: requests.Session, scenario: Scenario,
               data: st.DataObject) -> None:
    sent = wire(scenario, data.draw)
    origin = raw_dify.base_url.removesuffix("/v1")
    expected = expect(scenario, sent, origin)
    raw_dify.answer = tcp_pieces(sent.response, data.draw)
    raw_dify.pause = data.draw(st.sampled_from([0.0, 0.0, 0.001, 0.003]), label="pause between pieces")
    raw_dify.close_after = sent.ending == "cut"
    calls_before = len(raw_dify.calls)
    body = {"model": f"fuzz-{scenario.mode}", "stream": scenario.stream,
            "messages": [{"role": "user", "content": "hi"}]}
    if scenario.include_usage:
        body["stream_options"] = {"include_usage": True}
    try:
        with session.post(fuzz_gateway.gateway.base_url + "/chat/completions", json=body, headers=AUTH, stream=True,
                          timeout=CLIENT_TIMEOUT) as response:
            response.content  # noqa: B018 (reads the whole answer within the client's timeout)
            if scenario.stream and (expected.error is None or expected.committed):
                check_stream(response, expected, scenario.include_usage)
            else:
                check_body(response, expected)
            if response.status_code == 200:
                conversation = scenario.envelope.get("conversation_id") if scenario.envelope["task_id"] else None
                assert response.headers.get("X-Dify-Conversation-Id") == (conversation if conversation == UUID
                                                                           else None), response.headers
        runs = [call for call in raw_dify.calls[calls_before:] if call.method == "POST" and "/stop" not in call.path]
        assert [(call.path, call.key) for call in runs] == [
            (RUN_ROUTES.get(scenario.mode, "/v1/chat-messages"), APP_KEYS[scenario.mode])], runs
        if sent.ending != "clean" and expected.error and expected.error[1].startswith("upstream_") \
                and expected.task_id:
            # The body broke before Dify's end: the gateway stops the task (with the run's user).
            stop = STOP_ROUTES.get(scenario.mode, "/v1/chat-messages/{}/stop").format(expected.task_id)
            assert raw_dify.wait_for(lambda calls: any(call.path == stop for call in calls), 10), stop
            stop_call = next(call for call in raw_dify.calls if call.path == stop)
            assert isinstance(json.loads(stop_call.body).get("user"), str), stop_call
        fuzz_gateway.assert_healthy()
    except (AssertionError, requests.RequestException) as exc:
        raise AssertionError(f"{exc!r}\n--- scenario:\n{scenario.describe()}") from None
