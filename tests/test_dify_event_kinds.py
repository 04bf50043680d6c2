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


# -- 7. event sequences scripted on the raw fake Dify (tests/raw_dify.py) -------------------------


RAW_APPS = {f"app-raw-{mode}": {"name": f"raw-{mode}", "description": "", "tags": [], "mode": mode,
                                "author_name": "test"}
            for mode in ("chat", "agent", "advanced-chat", "workflow", "completion")}
TASK_ID = "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d"
CHAT_IDS = {"conversation_id": "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11",
            "message_id": "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44", "created_at": 1735689600, "task_id": TASK_ID}
WORKFLOW_IDS = {"workflow_run_id": "6a0f8c2e-3b1d-4e5f-9a7b-1c2d3e4f5a6b", "task_id": TASK_ID}


def chat_event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **CHAT_IDS, **fields}


def message_end(prompt: int = 5, completion: int = 3) -> dict[str, Any]:
    return chat_event("message_end", metadata={"usage": usage(prompt, completion)}, files=[])


def dify_stream(*events: dict[str, Any]) -> bytes:
    """For `RawDify.answer`: the events as one whole Dify stream, framed by Content-Length."""
    body = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture(scope="module")
def scripted(start_gateway, raw_dify) -> GatewayProcess:
    """A gateway in front of the raw fake Dify, one app of each mode (model `raw-<mode>`)."""
    raw_dify.apps.update(RAW_APPS)
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS=",".join(RAW_APPS))


def ask_scripted(gateway: GatewayProcess, raw_dify, mode: str, stream: bool, *events: dict[str, Any]) -> Answer:
    raw_dify.answer = dify_stream(*events)
    return answer_of(post(gateway, f"raw-{mode}", user_message("x"), stream), stream)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unflagged_message_replace_changes_nothing(scripted, raw_dify, stream):
    """Before langgenius/dify#17056 was fixed (Dify 1.0-1.2) output moderation sends
    message_replace with the unchanged answer on every run (docs/dify.md 4.5)."""
    answer = ask_scripted(scripted, raw_dify, "chat", stream, chat_event("message", answer="shang"),
                          chat_event("message", answer="hai"),
                          chat_event("message_replace", answer="shanghai", reason=""), message_end())
    assert (answer.content, answer.finish_reasons, answer.usage) == ("shanghai", ["stop"], usage(5, 3))


@pytest.mark.parametrize("stream", [False, True])
def test_a_flagged_message_replace_is_still_a_content_filter(scripted, raw_dify, stream):
    answer = ask_scripted(scripted, raw_dify, "chat", stream, chat_event("message", answer="shanghai"),
                          chat_event("message_replace", answer="[blocked]", reason=""), message_end())
    # A stream cannot take back what it sent: the replacement follows it.
    assert answer.content == ("shanghai[blocked]" if stream else "[blocked]")
    assert answer.finish_reasons == ["content_filter"]


@pytest.mark.parametrize("stream", [False, True])
def test_new_agent_answer_is_not_repeated_after_a_tool_made_a_file(scripted, raw_dify, stream):
    """After a file for the answer Dify relabels `message` chunks as `message_file`, New Agent's
    closing full answer included (docs/dify.md 4.5, 4.6)."""
    answer = ask_scripted(scripted, raw_dify, "agent", stream, chat_event("agent_message", answer="Here "),
                          chat_event("agent_message", answer="it is."),
                          chat_event("message_file", id="f1", type="image", belongs_to="assistant", url="/files/x.png"),
                          chat_event("message_file", answer="Here it is.", from_variable_selector=[]), message_end())
    origin = raw_dify.base_url.removesuffix("/v1")
    assert answer.content == f"Here it is.\n\n![image]({origin}/files/x.png)\n\n"
    assert answer.finish_reasons == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
def test_new_agent_tool_call_shows_its_whole_arguments(scripted, raw_dify, stream):
    """New Agent upserts the tool row with each argument delta (docs/dify.md 4.6)."""
    def row(**fields: Any) -> dict[str, Any]:
        return chat_event("agent_thought", **{"id": "T3", "position": 3, "thought": "", "observation": "",
                                              "tool": "get_weather", **fields})

    answer = ask_scripted(scripted, raw_dify, "agent", stream, row(tool_input='{"ci'),
                          row(tool_input='{"city": "Paris"}'),
                          row(tool_input='{"city": "Paris"}', observation='{"temp": 21}'),
                          chat_event("agent_message", answer="It is 21."), chat_event("message", answer="It is 21."),
                          message_end())
    assert answer.reasoning == 'Calling tool get_weather with {"city": "Paris"}\nget_weather returned: {"temp": 21}\n'
    assert answer.content == "It is 21." and answer.finish_reasons == ["stop"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stopped_chatflow_before_113_keeps_the_usage_of_its_message_end(scripted, raw_dify, stream):
    """Chatflow <= 1.12 sends workflow_finished(stopped), then message_end (docs/dify.md 4.6, 7)."""
    answer = ask_scripted(scripted, raw_dify, "advanced-chat", stream, chat_event("message", answer="Hi"),
                          chat_event("workflow_finished", workflow_run_id="w1",
                                     data={"status": "stopped", "total_tokens": 9, "outputs": {"answer": "Hi"}}),
                          message_end(5, 3))
    assert (answer.content, answer.finish_reasons, answer.usage) == ("Hi", ["stop"], usage(5, 3))


@pytest.mark.parametrize("stream", [False, True])
def test_a_stopped_workflow_keeps_its_usage_and_outputs(scripted, raw_dify, stream):
    finished = {"event": "workflow_finished", **WORKFLOW_IDS,
                "data": {"status": "stopped", "total_tokens": 9, "outputs": {"text": "half an answer"}}}
    answer = ask_scripted(scripted, raw_dify, "workflow", stream, finished)
    assert (answer.content, answer.finish_reasons, answer.usage) == ("half an answer", ["stop"], workflow_usage(9))


@pytest.mark.parametrize("stream", [False, True])
def test_negative_token_counts_count_zero(scripted, raw_dify, stream):
    end = chat_event("message_end", metadata={"usage": {"prompt_tokens": "-5", "completion_tokens": 3,
                                                        "total_tokens": -2}})
    answer = ask_scripted(scripted, raw_dify, "chat", stream, chat_event("message", answer="ok"), end)
    assert (answer.content, answer.usage) == ("ok", usage(0, 3))


def test_a_replaced_text_completion_keeps_its_echoed_prompt(scripted, raw_dify):
    events = [{"event": "message", **CHAT_IDS, "answer": "hello"},
              {"event": "message_replace", **CHAT_IDS, "answer": "[blocked]", "reason": ""}, message_end()]
    raw_dify.answer = dify_stream(*events)
    response = requests.post(scripted.base_url + "/completions", headers=AUTH, timeout=TIMEOUT,
                             json={"model": "raw-completion", "prompt": "Say hi: ", "echo": True})
    assert response.status_code == 200, response.text
    [choice] = response.json()["choices"]
    assert (choice["text"], choice["finish_reason"]) == ("Say hi: [blocked]", "content_filter")
