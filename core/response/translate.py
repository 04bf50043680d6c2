"""Dify events -> output items (core/items.py), the one representation every rendering starts from.

`DifyEventTranslator` turns each Dify event of one stream into items (text, a replacement,
a keep-alive, the end, an error); core/response/render.py turns items into OpenAI SSE chunks
for streams or folds them into one body for non-streaming requests: one code path, two
renderings.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from core.errors import failure_from_message, from_dify_error, invalid_request, upstream_failure
from core.items import CITATIONS, END, ERROR, PING_ITEM, REASONING, REPLACE, TEXT, USAGE_KEYS, Item
from core.response.reasoning import AgentThoughts


def _token_count(value: Any) -> int:
    """A token count as Dify writes it (an int; a number in a string is taken too). Anything
    else counts 0, and so does a negative number: a malformed count must not fail an answer
    that is otherwise whole (nor, later, the metrics' counters, which only go up)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _digest(text: str) -> Any:
    """A running digest of answer text (lone surrogates, valid in JSON escapes, included)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass"))


def usage_from_dify(usage: Any) -> dict[str, int] | None:
    """OpenAI usage from Dify's `metadata.usage` (ints; Dify's prices are ignored)."""
    if not isinstance(usage, dict):
        return None
    counts = {key: _token_count(usage.get(key)) for key in USAGE_KEYS}
    if not counts["total_tokens"]:
        counts["total_tokens"] = counts["prompt_tokens"] + counts["completion_tokens"]
    return counts


def outputs_text(outputs: Any) -> str:
    """A workflow's answer from its End-node outputs: `answer`, `text` or `output`, else the
    only string output, else all outputs as JSON."""
    if not isinstance(outputs, dict) or not outputs:
        return ""
    for name in ("answer", "text", "output"):
        if isinstance(outputs.get(name), str):
            return outputs[name]
    strings = [value for value in outputs.values() if isinstance(value, str)]
    if len(strings) == 1:
        return strings[0]
    return json.dumps(outputs, ensure_ascii=False)


def citation_from_dify(resource: Any) -> dict[str, Any] | None:
    """One citation from a Dify retriever resource: the document, its dataset, the segment,
    its relevance score and the excerpt the answer drew on (absent fields left out)."""
    if not isinstance(resource, dict):
        return None
    fields = {
        "index": resource.get("position"),
        "document": resource.get("document_name"),
        "document_id": resource.get("document_id"),
        "dataset": resource.get("dataset_name"),
        "dataset_id": resource.get("dataset_id"),
        "segment_id": resource.get("segment_id"),
        "score": resource.get("score"),
        "page": resource.get("page"),
        "excerpt": resource.get("content"),
    }
    citation = {name: value for name, value in fields.items() if value not in (None, "")}
    return citation if citation.get("document") or citation.get("excerpt") else None


_EXCERPT_CHARS = 200


def sources_text(citations: list[dict[str, Any]]) -> str:
    """CITATIONS=markdown: a Sources list after the answer, one line per cited segment."""
    lines = ["", "", "**Sources**", ""]
    for number, citation in enumerate(citations, 1):
        name = citation.get("document") or "document"
        where = f" ({citation['dataset']})" if citation.get("dataset") else ""
        excerpt = " ".join(str(citation.get("excerpt") or "").split())
        if len(excerpt) > _EXCERPT_CHARS:
            excerpt = excerpt[:_EXCERPT_CHARS].rsplit(" ", 1)[0] + "…"
        lines.append(f"{number}. {name}{where}" + (f": {excerpt}" if excerpt else ""))
    return "\n".join(lines)


def _object(value: Any) -> dict[str, Any]:
    """An event's `data` or `metadata` object; anything else there counts as absent."""
    return value if isinstance(value, dict) else {}


def _dify_id(value: Any) -> str | None:
    """An id as Dify writes them (a UUID), or at least a string a response header can carry."""
    return value if isinstance(value, str) and value and value.isascii() and value.isprintable() else None


def pause_note(titles: list[str]) -> str:
    """The visible note that ends the answer of a run paused in Dify (README, "How OpenAI maps
    onto Dify"): where it waits, when Dify named the Human Input nodes."""
    if not titles:
        return "[Paused in Dify]"
    return f"[Paused in Dify: waiting for input at {', '.join(titles)}]"


# With WORKFLOW_PROGRESS, a line of reasoning when one of these starts a node (Iteration and Loop
# containers get no node_started, only their own events, docs/dify.md 4.5) or retries it.
_PROGRESS_EVENTS = frozenset({"node_started", "iteration_started", "loop_started", "node_retry"})


class DifyEventTranslator:
    """State of one Dify stream, for every app mode."""

    def __init__(self, app_mode: str, thoughts: AgentThoughts | None = None, file_origin: str = "",
                 node_progress: bool = False, citations: str = "off") -> None:
        """`thoughts` renders agent apps' tool steps (None: they are not shown); relative
        file URLs are made absolute with `file_origin`; `node_progress` shows each chatflow
        or workflow node as it starts, as reasoning; `citations` (CITATIONS) turns the
        knowledge an answer used into a CITATIONS item (`field`) or a Sources list at the
        end of the text (`markdown`)."""
        self.app_mode = app_mode
        self._thoughts = thoughts
        self._file_origin = file_origin
        self._node_progress = node_progress
        self._citations = citations
        self.task_id: str | None = None
        self.conversation_id: str | None = None
        self.message_id: str | None = None  # the Dify message of a chat-family answer
        self.usage: dict[str, int] | None = None
        self.finished = False
        self._agent_text_seen = False
        # A digest of the answer text this stream gave out so far (not the text: a held stream
        # stays small), to recognise a replacement that changes nothing (see `_replace`).
        self._answer = _digest("")
        # The agent iteration (agent_thought id) under way, and the agent_message text it streamed:
        # its thought repeats that text, which the client must not get twice.
        self._iteration: Any = None
        self._iteration_text: list[str] = []
        self._text_seen = False
        self._workflow_ended = False  # a chatflow's workflow_finished came (message_end may follow)
        self._waiting_at: list[str] = []  # the Human Input nodes a pausing run named (human_input_required)

    def feed(self, event: dict[str, Any]) -> list[Item]:
        name = event.get("event")
        if self.task_id is None and event.get("task_id"):
            self.task_id = event["task_id"]
            # They go into a response header and memory mode 2's reply suffix, where anything
            # else (a number, a newline, a character outside ASCII) would break the answer.
            self.conversation_id = _dify_id(event.get("conversation_id"))
            self.message_id = _dify_id(event.get("message_id"))
        if name == "message_replace":
            return self._replace(event.get("answer"))
        answer = event.get("answer")
        if answer is not None:
            return self._text(name, answer)
        if name == "ping":
            return [PING_ITEM]
        if name == "agent_thought":
            return self._agent_thought(event)
        if name == "message_file":
            return self._message_file(event)
        if name in _PROGRESS_EVENTS:
            return self._progress(name, event.get("data")) if self._node_progress else []
        if name == "reasoning_chunk":
            return self._reasoning_chunk(event.get("data"))
        if name == "text_chunk":  # workflow apps stream End-node text this way
            return self._text(name, _object(event.get("data")).get("text"))
        if name == "text_replace":
            return self._replace(_object(event.get("data")).get("text"))
        if name == "message_end":
            metadata = _object(event.get("metadata"))
            self.usage = usage_from_dify(metadata.get("usage"))
            return self._thoughts_left() + self._cited(metadata.get("retriever_resources")) + self._end("stop")
        if name == "error":
            self.finished = True
            return [(ERROR, from_dify_error(400, event))]
        if name == "human_input_required":
            form = event.get("data")
            title = form.get("node_title") if isinstance(form, dict) else None
            if isinstance(title, str) and title and title not in self._waiting_at:
                self._waiting_at.append(title)
            return []
        if name == "workflow_paused":
            return self._paused(event.get("data"))
        if name == "workflow_finished":
            # Dify >= 1.15 reports a run that failed before its graph started as a synthetic
            # pair whose task_id is the workflow run id (docs/dify.md 4.4, 4.6).
            task_id = event.get("task_id")
            pre_run = bool(task_id) and task_id == event.get("workflow_run_id")
            return self._workflow_finished(_object(event.get("data")), pre_run)
        return []

    def _text(self, name: str | None, answer: Any) -> list[Item]:
        # Any event with an `answer` is text, whatever its name: Dify 1.11.2-1.12 relabels
        # message chunks as `message_file` (docs/dify.md 4.5).
        if name == "agent_message":
            if isinstance(answer, str) and answer:
                self._agent_text_seen = True
                self._iteration_text.append(answer)
        elif name != "text_chunk" and self.app_mode == "agent" and self._agent_text_seen:
            # New Agent repeats the whole answer in one closing `message`, which Dify relabels
            # `message_file` once a tool made a file for the answer (docs/dify.md 4.5, 4.6).
            return []
        if not answer or not isinstance(answer, str):
            return []
        self._text_seen = True
        self._answer.update(answer.encode("utf-8", "surrogatepass"))
        return [(TEXT, answer)]

    def _replace(self, answer: Any) -> list[Item]:
        """message_replace / text_replace: output moderation replaced the answer. Before
        langgenius/dify#17056 was fixed (Dify 1.0-1.2) every run of an app with output
        moderation ends with one, carrying the unchanged answer: a replacement equal to the
        text given out so far changes nothing, and is dropped (docs/dify.md 4.5)."""
        text = answer if isinstance(answer, str) else str(answer or "")
        digest = _digest(text)
        if digest.digest() == self._answer.digest():
            return []
        self._answer = digest
        return [(REPLACE, text)]

    def _agent_thought(self, event: dict[str, Any]) -> list[Item]:
        iteration = event.get("id") or event.get("position")
        if iteration != self._iteration:
            self._iteration, self._iteration_text = iteration, []
        if self._thoughts is None:
            return []
        # New Agent upserts a tool call with each delta of its arguments (docs/dify.md 4.6).
        return self._thoughts.feed(event, shown="".join(self._iteration_text), argument_deltas=self.app_mode == "agent")

    def _message_file(self, event: dict[str, Any]) -> list[Item]:
        """A file made by a tool or the model, shown in the answer as Markdown."""
        url = event.get("url")
        if not isinstance(url, str) or not url or event.get("belongs_to", "assistant") != "assistant":
            return []
        if url.startswith("/"):
            url = self._file_origin + url
        self._text_seen = True
        link = f"![image]({url})" if event.get("type") == "image" else f"[file]({url})"
        return [(TEXT, f"\n\n{link}\n\n")]

    def _progress(self, name: str, node: Any) -> list[Item]:
        """WORKFLOW_PROGRESS: a reasoning line as a node starts (an Iteration or a Loop too) and
        when Dify retries one that failed (node_retry, docs/dify.md 4.5)."""
        node = node if isinstance(node, dict) else {}
        what = f"{node.get('title') or 'node'} ({node.get('node_type') or '?'})"
        return [(REASONING, f"Retrying {what}\n" if name == "node_retry" else f"Running {what}\n")]

    def _reasoning_chunk(self, data: Any) -> list[Item]:
        """An LLM node's separated reasoning (Dify >= 1.15, docs/dify.md 4.5): reasoning, never
        content (the answer's `message` events carry no <think> then); the empty `is_final`
        marker adds nothing."""
        text = data.get("reasoning") if isinstance(data, dict) else None
        return [(REASONING, text)] if isinstance(text, str) and text else []

    def _paused(self, data: Any) -> list[Item]:
        """workflow_paused (Dify >= 1.13, docs/dify.md 4.5 "Human input") ends the stream: the run
        waits for someone to fill a Human Input form and resumes only through Dify's own form
        endpoints, never in this answer. The answer ends normally, with the text so far and a
        visible note naming where the run waits; its usage is the run's token count so far."""
        data = data if isinstance(data, dict) else {}
        reasons = data.get("reasons") if isinstance(data.get("reasons"), list) else []
        named = [reason.get("node_title") for reason in reasons if isinstance(reason, dict)]
        titles = list(dict.fromkeys(title for title in named if isinstance(title, str) and title)) or self._waiting_at
        if self.usage is None and "total_tokens" in data:  # a workflow's count, as in workflow_finished
            total = data["total_tokens"]
            self.usage = usage_from_dify({"completion_tokens": total, "total_tokens": total})
        note = ("\n\n" if self._text_seen else "") + pause_note(titles)
        self._text_seen = True
        return self._thoughts_left() + [(TEXT, note)] + self._end("stop")

    def _workflow_finished(self, data: dict[str, Any], pre_run: bool = False) -> list[Item]:
        # Chatflow: >= 1.13.1 sends message_end before workflow_finished, <= 1.12 after it.
        # A run stopped in Dify (status `stopped`, docs/dify.md 7) ends like one that succeeded:
        # its usage and outputs are taken the same way.
        if data.get("status") == "failed":
            self.finished = True
            reason = str(data.get("error") or "no reason given")
            if pre_run:
                # Nothing ran, and the usual causes are the request's inputs or files: the
                # client's request was refused, as Dify before 1.13 refused it with an HTTP 400.
                return [(ERROR, invalid_request(f"Dify could not start the workflow: {reason}",
                                                code="workflow_not_started"))]
            # The reason is the failing node's error text, often the model provider's: a context
            # too long or a rate limit is told as an `error` event would tell it (core/errors.py).
            text = f"Dify workflow failed: {reason}"
            return [(ERROR, failure_from_message(reason, text) or upstream_failure(text, 502, "workflow_failed"))]
        if self.app_mode != "workflow":
            self._workflow_ended = True  # chatflow: message_end carries the usage
            return []
        total = _token_count(data.get("total_tokens"))
        self.usage = {"prompt_tokens": 0, "completion_tokens": total, "total_tokens": total}
        # Text the End node streamed is the answer; otherwise it is in the outputs.
        answer = "" if self._text_seen else outputs_text(data.get("outputs"))
        return self._thoughts_left() + ([(TEXT, answer)] if answer else []) + self._end("stop")

    def _cited(self, resources: Any) -> list[Item]:
        """The knowledge-base segments the answer used (message_end.metadata.retriever_resources,
        docs/dify.md 4.7), as CITATIONS wants them."""
        if self._citations == "off" or self.finished or not isinstance(resources, list):
            return []
        cited = [citation for resource in resources if (citation := citation_from_dify(resource))]
        if not cited:
            return []
        if self._citations == "markdown":
            return [(TEXT, sources_text(cited))]
        return [(CITATIONS, cited)]

    def _thoughts_left(self) -> list[Item]:
        """The agent tool calls still held (their arguments were incomplete), as the answer ends."""
        return self._thoughts.flush() if self._thoughts is not None and not self.finished else []

    def _end(self, finish_reason: str) -> list[Item]:
        if self.finished:
            return []
        self.finished = True
        return [(END, (finish_reason, self.usage))]

    def feed_eof(self) -> list[Item]:
        """The body ended: fine after a terminal event, an error item otherwise."""
        if self.finished:
            return []
        if self._workflow_ended:  # Dify >= 1.13 ends chatflow streams at workflow_finished.
            return self._thoughts_left() + self._end("stop")
        self.finished = True
        return [(ERROR, upstream_failure("Dify closed the stream before the answer was complete", 502,
                                     "upstream_incomplete"))]
