"""Dify event kinds beyond text and the usual ends, through the running gateway: answer chunks
relabelled `message_file`, New Agent apps, separated reasoning (`reasoning_chunk`), runs paused
at a Human Input node, runs refused before they started, iteration / loop / retry / agent-log /
parallel-branch events, and text-to-speech events (docs/dify.md 4.5, 4.6)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from dify_emulator.apps import CHAT_FILE_UPLOAD, DEFAULT_APPS
from dify_emulator.control import EmulatorProcess, start_emulator
from tests.conftest import CLIENT_KEY
from tests.gateway_process import GatewayProcess
from tests.scenarios import EVENT_WAIT, user_message

APPS = DEFAULT_APPS + [
    # Dify 1.11.2-1.12: every answer chunk of a message with a file attached comes as message_file.
    {"key": "app-relabel-chat", "name": "relabel-chat", "mode": "chat", "file_upload": CHAT_FILE_UPLOAD,
     "message_file_relabel": True},
    {"key": "app-new-agent", "name": "new-agent", "mode": "agent"},
]
KEYS = ",".join(app["key"] for app in APPS)
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
TIMEOUT = (5, EVENT_WAIT)  # connect, read
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                       "AAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def dify() -> Iterator[EmulatorProcess]:
    with start_emulator(apps=APPS) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def plain(start_gateway, dify) -> GatewayProcess:
    return start_gateway(DIFY_API_BASE=dify.base_url, DIFY_API_KEYS=KEYS)


@pytest.fixture(scope="module")
def progress(start_gateway, dify) -> GatewayProcess:
    return start_gateway(DIFY_API_BASE=dify.base_url, DIFY_API_KEYS=KEYS, WORKFLOW_PROGRESS="on")


@dataclass
class Answer:
    """What one client got: the choice's content, reasoning and finish reason, and the usage."""

    content: str = ""
    reasoning: str = ""
    finish_reasons: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None


def post(gateway: GatewayProcess, model: str, messages: list[dict[str, Any]], stream: bool) -> requests.Response:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return requests.post(gateway.base_url + "/chat/completions", json=body, headers=AUTH, timeout=TIMEOUT,
                         stream=stream)


def answer_of(response: requests.Response, stream: bool) -> Answer:
    """The answer of a 200 response; a stream must be well formed (data lines only, no error
    event, one finish_reason, the usage chunk, then `data: [DONE]` last) and end within
    EVENT_WAIT, keep-alive comments or not."""
    with response:
        assert response.status_code == 200, response.text
        if not stream:
            body = response.json()
            [choice] = body["choices"]
            message = choice["message"]
            return Answer(message["content"] or "", message.get("reasoning_content") or "", [choice["finish_reason"]],
                          {key: body["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")})
        lines = []
        deadline = time.monotonic() + EVENT_WAIT
        for line in response.iter_lines(decode_unicode=True):
            assert time.monotonic() < deadline, f"the stream did not end within {EVENT_WAIT} s: {lines[-3:]}"
            if line and not line.startswith(":"):
                lines.append(line)
    assert lines[-1] == "data: [DONE]", lines[-3:]
    answer = Answer()
    for line in lines[:-1]:
        assert line.startswith("data: {"), line
        chunk = json.loads(line[6:])
        assert "error" not in chunk, chunk
        if chunk.get("usage"):
            answer.usage = {key: chunk["usage"][key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
        for choice in chunk["choices"]:
            answer.content += choice["delta"].get("content") or ""
            answer.reasoning += choice["delta"].get("reasoning_content") or ""
            if choice["finish_reason"] is not None:
                answer.finish_reasons.append(choice["finish_reason"])
    return answer


def ask(gateway: GatewayProcess, model: str, text: str, stream: bool, **scenario: Any) -> Answer:
    return answer_of(post(gateway, model, user_message(text, **scenario), stream), stream)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def workflow_usage(total: int) -> dict[str, int]:
    """Chatflow and workflow runs count only their total tokens (docs/dify.md 6)."""
    return usage(0, total)


# -- 1. answer chunks relabelled message_file ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_relabelled_answer_chunks_with_an_uploaded_image_arrive_whole_and_once(plain, dify, stream):
    """With an uploaded image, Dify 1.11.2-1.12 sends every answer chunk as `message_file` with
    `answer` (docs/dify.md 4.5): still the whole answer, once, and no file link."""
    dify.reset()
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    parts = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": image}}]
    answer = answer_of(post(plain, "relabel-chat", [{"role": "user", "content": parts}], stream), stream)
    assert answer.content == "You said: what is this?"
    assert answer.finish_reasons == ["stop"] and answer.reasoning == ""
    assert answer.usage == usage(3, 5)
    [call] = [record["json"] for record in dify.requests() if record["path"] == "/v1/chat-messages"]
    [attached] = call["files"]  # the condition of the relabelling: the message has a file
    assert attached["transfer_method"] == "local_file"


# -- 2. New Agent apps and separated reasoning ----------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_new_agent_answer_is_not_doubled_by_its_closing_message(plain, stream):
    """New Agent streams the answer as agent_message deltas, then repeats all of it in one
    `message` (docs/dify.md 4.6): the client gets it once; the tool step is reasoning."""
    answer = ask(plain, "new-agent", "what time is it", stream)
    assert answer.content == "You said: what time is it"
    assert answer.reasoning == "Calling tool current_time with {}\ncurrent_time returned: 2025-01-01 10:00:00\n"
    assert answer.finish_reasons == ["stop"] and answer.usage == usage(4, 6)


@pytest.mark.parametrize(("model", "expected_usage"), [("demo-chatflow", usage(1, 3)),
                                                      ("demo-workflow", workflow_usage(4))])
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_chunks_are_reasoning_never_content(plain, model, expected_usage, stream):
    answer = ask(plain, model, "hi", stream, reasoning="First, the greeting. Then the reply.")
    assert answer.reasoning == "First, the greeting. Then the reply."
    assert answer.content == "You said: hi"
    assert answer.finish_reasons == ["stop"] and answer.usage == expected_usage


# -- 3. a run paused at a Human Input node --------------------------------------------------------


NOTE = "[Paused in Dify: waiting for input at Approval]"


@pytest.mark.parametrize("model", ["demo-chatflow", "demo-workflow"])
@pytest.mark.parametrize("stream", [False, True])
def test_paused_run_ends_with_its_text_and_a_note(plain, model, stream):
    answer = ask(plain, model, "hold on", stream, pause_for_input={"node_title": "Approval"})
    assert answer.content == "You said: hold on\n\n" + NOTE
    assert answer.finish_reasons == ["stop"] and answer.reasoning == ""
    assert answer.usage == workflow_usage(6)  # workflow_paused.total_tokens: 2 prompt + 4 answer tokens


@pytest.mark.parametrize("model", ["demo-chatflow", "demo-workflow"])
def test_paused_run_ends_at_workflow_paused_even_if_dify_keeps_the_stream_open(plain, dify, model):
    """The stream ends at workflow_paused, whatever Dify does after it (here: pings only, until the
    connection goes): the read timeout would fail a stream that waited for more."""
    dify.reset()
    scenario = {"pause_for_input": {"node_title": "Approval", "keep_open": True}, "ping_interval_s": 0.2}
    answer = ask(plain, model, "hold on", True, **scenario)
    assert answer.content == "You said: hold on\n\n" + NOTE and answer.finish_reasons == ["stop"]
    assert dify.stops() == []  # the run is paused, not stopped: it can still be resumed in Dify


@pytest.mark.parametrize("stream", [False, True])
def test_run_paused_before_any_text_is_still_an_answer(plain, stream):
    answer = ask(plain, "demo-chatflow", "x", stream, chunks=[], pause_for_input={"node_title": "Approval"})
    assert answer.content == NOTE and answer.finish_reasons == ["stop"] and answer.usage == workflow_usage(1)


# -- 4. a run refused before it started ----------------------------------------------------------


@pytest.mark.parametrize("model", ["demo-chatflow", "demo-workflow"])
@pytest.mark.parametrize("stream", [False, True])
def test_pre_run_failure_is_a_400(plain, dify, model, stream):
    """Dify >= 1.15 streams a failure before the graph starts as a synthetic workflow_started +
    workflow_finished(failed) pair (docs/dify.md 4.6): the client gets a real HTTP 400."""
    dify.reset()
    response = post(plain, model, user_message("x", pre_run_failure="text is required in input form"), stream)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"error": {"message": "Dify could not start the workflow: text is required in input form",
                                         "type": "invalid_request_error", "param": None,
                                         "code": "workflow_not_started"}}
    assert dify.stops() == []  # the run had ended: nothing to stop


def test_a_failure_after_the_run_started_stays_a_502(plain):
    """The same failure without the pre-run marks (a run that started and failed) is Dify's fault."""
    response = post(plain, "demo-workflow", user_message("x", chunks=[], workflow_status="failed",
                                                         workflow_error="node broke"), False)
    assert response.status_code == 502 and response.json()["error"]["code"] == "workflow_failed"


# -- 5. iteration, loop, retry, agent-log and parallel-branch events ----------------------------


@pytest.mark.parametrize(("model", "expected_usage"), [("demo-chatflow", usage(1, 3)),
                                                      ("demo-workflow", workflow_usage(4))])
@pytest.mark.parametrize("stream", [False, True])
def test_extra_node_events_change_nothing(plain, model, expected_usage, stream):
    answer = ask(plain, model, "hi", stream, extra_node_events=True)
    assert answer.content == "You said: hi" and answer.reasoning == ""
    assert answer.finish_reasons == ["stop"] and answer.usage == expected_usage


PROGRESS = ("Running Start (start)\nRunning Agent (agent)\nRunning Iteration (iteration)\nRunning Code (code)\n"
            "Running Code (code)\nRunning Loop (loop)\nRunning Template (template-transform)\nRunning LLM (llm)\n"
            "Retrying LLM (llm)\n")


@pytest.mark.parametrize(("model", "last_node"), [("demo-chatflow", "Answer (answer)"), ("demo-workflow", "End (end)")])
@pytest.mark.parametrize("stream", [False, True])
def test_extra_node_events_as_workflow_progress(progress, model, last_node, stream):
    answer = ask(progress, model, "hi", stream, extra_node_events=True)
    assert answer.reasoning == PROGRESS + f"Running {last_node}\n"
    assert answer.content == "You said: hi" and answer.finish_reasons == ["stop"]


# -- 6. text-to-speech events ---------------------------------------------------------------------


@pytest.mark.parametrize(("model", "scenario", "expected_usage"), [
    ("demo-chat", {"tts": True}, usage(1, 3)),  # tts_message, tts_message_end after message_end
    ("demo-chat", {"tts": "end_only"}, usage(1, 3)),  # a lone tts_message_end after message_end
    ("demo-chat", {"tts": "interleaved"}, usage(1, 3)),  # audio between the answer chunks
    ("demo-chatflow", {"tts": True, "chatflow_order": "pre113"}, usage(1, 3)),  # after message_end
    ("demo-workflow", {"tts": True, "chatflow_order": "pre113"}, workflow_usage(4)),  # after workflow_finished
    ("demo-workflow", {"tts": "interleaved"}, workflow_usage(4)),
])
@pytest.mark.parametrize("stream", [False, True])
def test_tts_events_are_ignored(plain, model, scenario, expected_usage, stream):
    answer = ask(plain, model, "hi", stream, **scenario)
    assert answer.content == "You said: hi" and answer.reasoning == ""
    assert answer.finish_reasons == ["stop"] and answer.usage == expected_usage
