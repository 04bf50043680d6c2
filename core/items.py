"""The output items: what flows from a Dify stream to a rendering, in one vocabulary.

Every stage of the response side speaks it: the translator turns Dify events into items,
the text stages and the pipeline rewrite them, the pacer spreads them over time, the relays
hand them out in batches, and the renderers turn them into OpenAI chunks or bodies. An item
is a `(kind, value)` tuple, cheap on the per-event hot path; the kinds and their values:

| kind | value | made by |
|---|---|---|
| TEXT | answer text to append | translator, text stages |
| REPLACE | text that replaces everything so far (Dify output moderation) | translator |
| PING | None: Dify is alive but silent | translator, relay |
| END | (finish_reason, usage dict or None) | translator, pipeline |
| ERROR | an OpenAIError; the answer ends with it | translator, relay |
| REASONING | reasoning text (`reasoning_content`) | think splitter, agent thoughts |
| THINK_TAG | `<think>` or `</think>` kept as content (THINK_TAGS=content) | think splitter |
| AGENT_TOOL_CALL | {"id", "name", "arguments"}: a tool that already ran on Dify | agent thoughts |
| AGENT_TOOL_RESULT | {"id", "name", "content"} | agent thoughts |
| TOOL_CALL | a ToolCall the client is asked to make | tool-call parser |
| CITATIONS | [{"index", "document", "dataset", "score", "excerpt", ...}]: knowledge the answer used | translator |

Only this module defines kinds; every other module imports them from here. It also names the
other values several stages must agree on: the usage keys and memory mode 2's zero-width
alphabet and separator (the pacer never cuts inside a run of them).
"""

from __future__ import annotations

from typing import Any

Item = tuple[str, Any]

TEXT = "text"
REPLACE = "replace"
PING = "ping"
END = "end"
ERROR = "error"
REASONING = "reasoning"
THINK_TAG = "think_tag"
AGENT_TOOL_CALL = "agent_tool_call"
AGENT_TOOL_RESULT = "agent_tool_result"
TOOL_CALL = "tool_call"
CITATIONS = "citations"

PING_ITEM: Item = (PING, None)

# OpenAI's usage counts, in the order OpenAI writes them.
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")

# Memory mode 2 writes the Dify conversation id with these eight characters (octal digits
# 0-7), bit-compatible with the original OpenDify (README, "Conversation memory").
ZERO_WIDTH_DIGITS = "\u200b\u200c\u200d\ufeff\u2060\u180e\u2061\u2062"
# Between the reply's message id and its conversation id (INVISIBLE SEPARATOR, not a digit).
ZERO_WIDTH_SEPARATOR = "\u2063"
