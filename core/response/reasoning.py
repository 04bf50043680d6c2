"""Reasoning inside Dify answers: `<think>` blocks and agent thoughts.

Two kinds of "thinking" reach the gateway inside a Dify answer stream:
- Reasoning models wrapped by Dify put their chain of thought into the answer text between
  `<think>` and `</think>` (older Dify: a `<details>` block titled "Thinking..."). `ThinkSplitter`
  separates it from the answer so that it can go out as `reasoning_content` and programmatic
  clients get clean `content` (docs/clients.md 2.1, 2.2).
- Agent apps report every iteration as repeated `agent_thought` upserts (docs/dify.md 4.5, 4.6).
  `AgentThoughts` turns what each upsert adds into readable reasoning or tool-call items.

Both produce items (core/items.py); no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from core.items import AGENT_TOOL_CALL, AGENT_TOOL_RESULT, REASONING, TEXT, THINK_TAG, Item

# With keep_tags the tags are THINK_TAG items: rendered as content, but never cut, merged or
# paced like text, since NextChat recognises only a chunk that is exactly a tag.
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DETAILS_CLOSE = "</details>"

# Bounds on the variable parts of Dify's old wrapper keep the held-back text short when an answer
# merely contains "<details" (real HTML): past these lengths it cannot be the wrapper.
_ATTRIBUTES_MAX = 256
_SPACE_MAX = 64
_SPACE = rf"\s{{0,{_SPACE_MAX}}}"

# Dify's old wrapper: `<details style="…" open> <summary> Thinking... </summary>`. Each token is
# (is_literal, text); literal text is escaped, the others are regex classes that may match nothing.
_DETAILS_TOKENS: tuple[tuple[bool, str], ...] = (
    (True, "<details"), (False, rf"[^>]{{0,{_ATTRIBUTES_MAX}}}"), (True, ">"), (False, _SPACE),
    (True, "<summary>"), (False, _SPACE), (True, "Thinking..."), (False, _SPACE), (True, "</summary>"),
)
_OPEN_MAX = sum(len(text) for is_literal, text in _DETAILS_TOKENS if is_literal) + _ATTRIBUTES_MAX + 3 * _SPACE_MAX


def _full_pattern(tokens: tuple[tuple[bool, str], ...]) -> str:
    return "".join(re.escape(text) if is_literal else text for is_literal, text in tokens)


def _prefix_pattern(tokens: tuple[tuple[bool, str], ...]) -> str:
    """A regex that fully matches every non-empty prefix of a text that `tokens` match.

    `re` has no partial matching, so the prefixes are spelled out: a literal is either complete
    (then the rest may follow) or cut short; a class may stop anywhere, then the rest may follow.
    """
    is_literal, text = tokens[0]
    rest = f"(?:{_prefix_pattern(tokens[1:])})?" if len(tokens) > 1 else ""
    if not is_literal:
        return text + rest
    shorter = "|".join(re.escape(text[:size]) for size in range(1, len(text)))
    return f"(?:{re.escape(text)}{rest}|{shorter})" if shorter else re.escape(text) + rest


_THINK_TOKENS = ((True, THINK_OPEN),)
_OPEN = re.compile(f"(?P<think>{_full_pattern(_THINK_TOKENS)})|(?P<details>{_full_pattern(_DETAILS_TOKENS)})")
_OPEN_PREFIX = re.compile(f"{_prefix_pattern(_THINK_TOKENS)}|{_prefix_pattern(_DETAILS_TOKENS)}")


def _partial_suffix_start(text: str, tag: str) -> int:
    """Where the longest end of `text` that could begin `tag` starts (len(text) if none)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return len(text) - size
    return len(text)


class ThinkSplitter:
    """Splits one streamed answer into text and reasoning items, in order.

    Only a possible tag prefix at the end of a piece ("<thi") is held back; everything else is
    emitted at once. With `keep_tags` everything stays text and the tags go out as items of their
    own, normalised to `<think>`/`</think>`: NextChat only notices a chunk that starts with
    `<think>` or ends with `</think>` (docs/clients.md 2.2).
    """

    def __init__(self, keep_tags: bool = False) -> None:
        self.keep_tags = keep_tags
        self._reset()

    def _reset(self) -> None:
        self._pending = ""  # received but not emitted: a possible tag prefix, or leading whitespace
        self._close_tag: str | None = None  # inside a reasoning block: the tag that ends it
        self._skip_space = False  # drop whitespace just after a tag ("</think>\n\n")
        self._started = False  # something other than whitespace has been seen

    def feed(self, text: str) -> list[Item]:
        self._pending += text
        out: list[Item] = []
        while self._step(out):
            pass
        return out

    def flush(self) -> list[Item]:
        """The answer ended: whatever was held back goes out; an unterminated block stays reasoning."""
        out: list[Item] = []
        pending = self._pending.lstrip() if self._skip_space else self._pending
        self._emit(out, REASONING if self._close_tag else TEXT, pending)
        self._reset()
        return out

    def _step(self, out: list[Item]) -> bool:
        """Consume what can be decided now; True when a tag was consumed and there may be more."""
        if self._skip_space:
            self._pending = self._pending.lstrip()
            if not self._pending:
                return False
            self._skip_space = False
        if self._close_tag:
            return self._step_inside(out)
        return self._step_outside(out)

    def _step_outside(self, out: list[Item]) -> bool:
        match = _OPEN.search(self._pending)
        if match is None:
            cut = self._open_prefix_start()
            head = self._pending[:cut]
            if not head or (not self._started and head.isspace()):
                return False  # whitespace before a leading <think> is dropped: wait and see
            self._emit(out, TEXT, head)
            self._started = True
            self._pending = self._pending[cut:]
            return False
        before = self._pending[:match.start()]
        if self._started or not before.isspace():
            self._emit(out, TEXT, before)
        self._pending = self._pending[match.end():]
        self._close_tag = THINK_CLOSE if match.lastgroup == "think" else DETAILS_CLOSE
        self._started = self._skip_space = True
        if self.keep_tags:
            out.append((THINK_TAG, THINK_OPEN))
        return True

    def _step_inside(self, out: list[Item]) -> bool:
        assert self._close_tag is not None
        end = self._pending.find(self._close_tag)
        if end == -1:
            cut = _partial_suffix_start(self._pending, self._close_tag)
            self._emit(out, REASONING, self._pending[:cut])
            self._pending = self._pending[cut:]
            return False
        self._emit(out, REASONING, self._pending[:end])
        self._pending = self._pending[end + len(self._close_tag):]
        self._close_tag = None
        self._skip_space = True
        if self.keep_tags:
            out.append((THINK_TAG, THINK_CLOSE))
        return True

    def _open_prefix_start(self) -> int:
        """Where an opening tag that is still incomplete starts at the end of the pending text."""
        pending = self._pending
        index = pending.find("<", max(0, len(pending) - _OPEN_MAX))
        while index != -1:
            if _OPEN_PREFIX.fullmatch(pending, index):
                return index
            index = pending.find("<", index + 1)
        return len(pending)

    def _emit(self, out: list[Item], kind: str, text: str) -> None:
        if text:
            out.append((TEXT if self.keep_tags else kind, text))


# AgentThoughts modes.
AGENT_REASONING = "reasoning"  # readable lines as reasoning_content
AGENT_TOOL_CALLS = "tool_calls"  # tool-call and tool-result items
AGENT_HIDDEN = "hidden"  # nothing
AGENT_MODES = (AGENT_REASONING, AGENT_TOOL_CALLS, AGENT_HIDDEN)


@dataclass
class _Thought:
    """What has been emitted for one agent_thought id (one agent iteration)."""

    key: str
    tools: dict[str, int] = field(default_factory=dict)  # tool name -> call number, in order of appearance
    called: set[str] = field(default_factory=set)  # tools whose call was emitted
    answered: set[str] = field(default_factory=set)  # tools whose observation was emitted
    thought: str = ""  # thought text already rendered
    tool_input: Any = None  # the newest tool_input, for calls held until it is complete

    def call_id(self, name: str) -> str:
        return f"call_{self.key}_{self.tools[name]}"


def _text(value: Any) -> str:
    """A field as text: Dify sends "" or null for missing ones, and newer versions may send objects."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _parse(value: Any) -> tuple[str, Any]:
    """(raw text, parsed JSON or None) of a field that normally holds a JSON string."""
    if isinstance(value, (dict, list)):
        return _text(value), value
    raw = _text(value)
    try:
        return raw, json.loads(raw)
    except ValueError:
        return raw, None


def _tool_names(value: Any) -> list[str]:
    """Several tools called in one iteration arrive joined by ";" (docs/dify.md 4.5)."""
    return [name.strip() for name in _text(value).split(";") if name.strip()]


def _is_json(value: Any) -> bool:
    """Whether a tool_input is complete: JSON (New Agent upserts it with each argument delta)."""
    if isinstance(value, (dict, list)):
        return True
    try:
        json.loads(_text(value))
    except ValueError:
        return False
    return True


def _keyed(parsed: Any, names: list[str]) -> bool:
    """True when the JSON maps tool names to values ({"tool": args}), as Dify writes it."""
    return isinstance(parsed, dict) and any(name in parsed for name in names)


def _arguments(name: str, names: list[str], raw: str, parsed: Any) -> str:
    """The JSON arguments of one tool; raw text when tool_input is not keyed by tool name."""
    if _keyed(parsed, names):
        args = parsed.get(name)
        if args is None or args == "":
            return "{}"
        return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return raw or "{}"


def _result(name: str, names: list[str], raw: str, parsed: Any) -> str | None:
    """One tool's observation, None while it has none; raw text when not keyed by tool name."""
    if not raw:
        return None
    if _keyed(parsed, names):
        return _text(parsed[name]) if name in parsed else None
    return raw


class AgentThoughts:
    """Turns agent_thought upserts into what is new since the previous upsert of the same id.

    Dify sends one iteration's thought several times with more content each time (docs/dify.md
    4.6); its tools have already run on Dify, so they are reported, never executed. In reasoning
    mode the `thought` text is rendered only for iterations that call a tool: the last iteration's
    thought is the final answer, which agent_message already streams.

    Easy-UI agents name a tool with its whole `tool_input`, so its call goes out at once. New
    Agent upserts the tool row with each argument delta (`{"ci`, then `{"city": "Paris"}`,
    docs/dify.md 4.6): there a call goes out once its arguments are known, when `tool_input`
    parses as JSON, when its observation arrives, when the next thought begins, or, through
    `flush`, when the answer ends.
    """

    def __init__(self, mode: str = AGENT_REASONING) -> None:
        if mode not in AGENT_MODES:
            raise ValueError(f"agent thought mode must be one of {', '.join(AGENT_MODES)}, not {mode!r}")
        self.mode = mode
        self._thoughts: dict[str, _Thought] = {}
        self._current: _Thought | None = None  # the thought of the newest upsert
        self._line_open = False  # the last reasoning text did not end with a newline

    def feed(self, event: dict[str, Any], shown: str = "", argument_deltas: bool = False) -> list[Item]:
        """What this agent_thought event adds to the earlier ones with the same id. `shown`: the
        text this iteration already streamed as the answer (agent_message), which a function-
        calling agent's thought repeats: it is not shown again. `argument_deltas`: tool_input
        may still be incomplete (New Agent), so a call waits for its whole arguments."""
        if self.mode == AGENT_HIDDEN:
            return []
        state = self._state(event)
        out = self._held(self._current) if self._current is not None and self._current is not state else []
        self._current = state
        for name in _tool_names(event.get("tool")):
            state.tools.setdefault(name, len(state.tools))
        if not state.tools:
            return out  # no tool yet: the thought may still turn out to be the final answer
        steps = self._new_steps(state, event, argument_deltas)
        if self.mode == AGENT_TOOL_CALLS:
            return out + [self._tool_item(state, kind, name, value) for kind, name, value in steps]
        thought = _text(event.get("thought"))
        if shown.strip() and " ".join(thought.split()) == " ".join(shown.split()):
            state.thought = thought  # already on the client's screen, as answer text
        return out + self._reasoning(state, thought, steps)

    def flush(self) -> list[Item]:
        """The calls still held back for want of complete arguments (the answer ended): each with
        the newest arguments Dify sent."""
        out: list[Item] = []
        for state in self._thoughts.values():
            out += self._held(state)
        return out

    def _held(self, state: _Thought) -> list[Item]:
        """The calls of `state` not emitted yet, with the newest arguments it had."""
        names = list(state.tools)
        raw_input, tool_input = _parse(state.tool_input)
        steps = []
        for name in names:
            if name not in state.called:
                state.called.add(name)
                steps.append((AGENT_TOOL_CALL, name, _arguments(name, names, raw_input, tool_input)))
        if not steps or self.mode == AGENT_HIDDEN:
            return []
        if self.mode == AGENT_TOOL_CALLS:
            return [self._tool_item(state, kind, name, value) for kind, name, value in steps]
        return self._reasoning(state, state.thought, steps)

    def _state(self, event: dict[str, Any]) -> _Thought:
        # Clients upsert by id, or by position when there is no id (docs/dify.md 4.5).
        key = _text(event.get("id") or event.get("position"))
        if key not in self._thoughts:
            self._thoughts[key] = _Thought(key)
        return self._thoughts[key]

    @staticmethod
    def _new_steps(state: _Thought, event: dict[str, Any], argument_deltas: bool) -> list[tuple[str, str, str]]:
        """(kind, tool name, arguments or content) not emitted yet; a call always before its result,
        even when the observation arrives in the first upsert that names the tool. With
        `argument_deltas`, a call whose tool_input is not whole JSON yet, and that has no
        observation, is held (see the class)."""
        names = list(state.tools)
        if event.get("tool_input") not in (None, ""):
            state.tool_input = event.get("tool_input")
        raw_input, tool_input = _parse(state.tool_input)
        raw_output, observation = _parse(event.get("observation"))
        complete = not argument_deltas or bool(raw_output) or _is_json(state.tool_input)
        steps = []
        for name in names:
            if name not in state.called:
                if not complete:
                    continue
                state.called.add(name)
                steps.append((AGENT_TOOL_CALL, name, _arguments(name, names, raw_input, tool_input)))
            content = None if name in state.answered else _result(name, names, raw_output, observation)
            if content is not None:
                state.answered.add(name)
                steps.append((AGENT_TOOL_RESULT, name, content))
        return steps

    @staticmethod
    def _tool_item(state: _Thought, kind: str, name: str, value: str) -> Item:
        value_key = "arguments" if kind == AGENT_TOOL_CALL else "content"
        return kind, {"id": state.call_id(name), "name": name, value_key: value}

    def _reasoning(self, state: _Thought, thought: str, steps: list[tuple[str, str, str]]) -> list[Item]:
        """Readable reasoning: new thought text, then one line per call and per result."""
        parts: list[str] = []
        if len(thought) > len(state.thought) and thought.startswith(state.thought):
            # Only the continuation: a rewritten thought was already shown in an earlier form.
            new_text = thought[len(state.thought):]
            if not state.thought:
                self._new_line(parts)
            state.thought = thought
            self._add(parts, new_text)
        for kind, name, value in steps:
            self._new_line(parts)
            if kind == AGENT_TOOL_CALL:
                self._add(parts, f"Calling tool {name} with {value}\n")
            else:
                self._add(parts, f"{name} returned: {value}\n")
        text = "".join(parts)
        return [(REASONING, text)] if text else []

    def _new_line(self, parts: list[str]) -> None:
        if self._line_open:
            self._add(parts, "\n")

    def _add(self, parts: list[str], text: str) -> None:
        parts.append(text)
        self._line_open = not text.endswith("\n")
