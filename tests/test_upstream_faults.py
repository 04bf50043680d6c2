"""What a client sees for each kind of upstream fault; the worker always survives."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import EVENT_WAIT, running_dify_answer, wait_for
from tests.test_http_surface import assert_openai_error, chat_body, read_sse

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}


def post(gateway, body, **kwargs) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", json=body, headers=HEADERS, timeout=30, **kwargs)


def stream_outcome(gateway, **scenario) -> tuple[str, dict | None]:
    """(the streamed text, the error event or None) of a stream that started with 200."""
    response = post(gateway, chat_body("a b c", **scenario), stream=True)
    assert response.status_code == 200, response.text
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    error = payloads[-1].get("error")
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))
    return text, error


def assert_alive(gateway, worker_pids):
    reply = post(gateway, chat_body("still there", stream=False))
    assert reply.json()["choices"][0]["message"]["content"] == "You said: still there"
    assert gateway.worker_pids() == worker_pids  # no worker crashed or was replaced


def test_dns_failure_is_503(start_gateway):
    gateway = start_gateway(ready_path="/healthz", DIFY_API_BASE="http://dify.nonexistent.invalid/v1")
    assert_openai_error(post(gateway, chat_body()), 503, "upstream_unavailable")


@pytest.mark.parametrize("stream", [True, False])
def test_reset_before_headers_is_502_not_to_be_retried(gateway, stream):
    """The request reached Dify, which may have started the run: no 503, no retry."""
    workers = gateway.worker_pids()
    response = post(gateway, chat_body("x", stream=stream, reset_before_headers=True))
    assert_openai_error(response, 502, "upstream_disconnected")
    assert response.headers["x-should-retry"] == "false"
    assert_alive(gateway, workers)


def test_reset_mid_stream_keeps_the_text_and_ends_with_an_error(gateway):
    workers = gateway.worker_pids()
    text, error = stream_outcome(gateway, reset_after=2)
    assert text == "You said: " and error["code"] == "upstream_disconnected"
    assert_alive(gateway, workers)


def test_reset_mid_answer_without_streaming_is_502(gateway):
    assert_openai_error(post(gateway, chat_body("a b c", stream=False, reset_after=2)), 502, "upstream_disconnected")


@pytest.mark.parametrize("raw", [
    "data: not json\n\n",
    "event: foo\ndata: {\"event\": \"surprise\", \"answer_like\": 1}\n\n",
    "id: 7\nretry: 100\n: comment\n\n",
    "data: [1, 2, 3]\n\n",
    "data: {\"event\": \"tts_message\", \"audio\": \"AAAA\"}\n\n",
])
def test_malformed_and_unknown_events_are_skipped(gateway, raw):
    workers = gateway.worker_pids()
    text, error = stream_outcome(gateway, raw_before=[raw])
    assert (text, error) == ("You said: a b c", None)
    assert_alive(gateway, workers)


@pytest.fixture(scope="module")
def roomy_gateway(start_gateway):
    """Large events are made by the emulator from the request, so the request must be large too.
    The first event may take long to read: the gateway waits for it before committing to 200."""
    return start_gateway(MAX_PROMPT_CHARS="30000000", MAX_REQUEST_MB="64", FIRST_EVENT_WAIT="120")


def test_a_very_large_event_passes(roomy_gateway):
    big = "x" * 2_000_000
    text, error = stream_outcome(roomy_gateway, raw_before=[json.dumps({"event": "node_started", "data": {"pad": big}})
                                                      .join(["data: ", "\n\n"])])
    assert (text, error) == ("You said: a b c", None)


def test_a_stream_that_never_ends_an_event_line_is_refused(roomy_gateway):
    """Bytes without a newline cannot be buffered forever (MAX_EVENT_BYTES, 16 MiB). They come
    before any event, and the gateway waits for a first event before committing (however long
    17 MiB take to read on a loaded machine): the refusal is the HTTP answer."""
    response = post(roomy_gateway, chat_body("a", raw_before=["data: " + "y" * (17 * 1024 * 1024)]), stream=True)
    assert assert_openai_error(response, 502) == {
        "message": "Dify sent a malformed stream: an upstream event exceeded 16777216 bytes", "type": "server_error",
        "param": None, "code": "upstream_error"}


def test_keys_never_reach_the_logs(start_gateway):
    gateway = start_gateway(LOG_LEVEL="DEBUG", ACCESS_LOG="-")
    for scenario in ({"http_error": "unauthorized"}, {"http_error": "html_502"}, {"error_after": 1}, {}):
        post(gateway, chat_body("x", stream=False, **scenario))
    requests.get(gateway.base_url + "/models", headers={"Authorization": "Bearer sk-wrong-key"}, timeout=10)
    log = gateway.output()
    assert "POST /v1/chat/completions" in log  # the access log is on
    for secret in ("app-demo-chat", CLIENT_KEY, "sk-wrong-key", "Bearer"):
        assert secret not in log


# --- a raw fake Dify (tests/raw_dify.py): bodies that break off, and events of the wrong shape ------

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
IDS = {"conversation_id": "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11", "message_id": "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44",
       "task_id": "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d"}


@pytest.fixture(scope="module")
def raw_gateway(raw_dify, start_gateway):
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", TIMEOUT="2", SMOOTH_OUTPUT="off")


@pytest.fixture
def dify(raw_dify):
    """The raw fake Dify, put back as it was after the test."""
    yield raw_dify
    raw_dify.pause, raw_dify.close_after, raw_dify.stop_answer = 0.0, False, None


def sse(*events: dict) -> bytes:
    return b"".join(b"data: " + json.dumps({**IDS, **event}).encode() + b"\n\n" for event in events)


def with_length(body: bytes) -> bytes:
    return SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body


def raw_ask(gateway, stream: bool, **body) -> requests.Response:
    return post(gateway, {"model": "raw-chat", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
                          **body}, stream=stream)


def raw_outcome(gateway, stream: bool) -> tuple[str, dict | None]:
    """(the answer text, the error event or None) of a request that got 200."""
    response = raw_ask(gateway, stream)
    assert response.status_code == 200, response.text
    if not stream:
        return response.json()["choices"][0]["message"]["content"], None
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))
    return text, payloads[-1].get("error")


ERROR_HEAD = b"HTTP/1.1 400 BAD REQUEST\r\nContent-Type: application/json\r\nContent-Length: 120\r\n"
CUT_ERROR_BODY = b'{"code": "invalid_param", "message": "the qu'


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_refusal_whose_body_breaks_off_is_502(raw_gateway, dify, stream):
    """Dify's error body ends (the connection closes) before its Content-Length."""
    dify.answer = ERROR_HEAD + b"Connection: close\r\n\r\n" + CUT_ERROR_BODY
    response = raw_ask(raw_gateway, stream)
    assert_openai_error(response, 502, "upstream_disconnected")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_refusal_whose_body_goes_silent_is_504(raw_gateway, dify, stream):
    """Dify's error body stops coming (TIMEOUT is 2 s here) and the connection stays open."""
    silent = threading.Event()
    dify.answer = [ERROR_HEAD + b"\r\n" + CUT_ERROR_BODY, silent]
    try:
        assert_openai_error(raw_ask(raw_gateway, stream), 504, "upstream_timeout")
    finally:
        silent.set()


def test_a_stop_call_whose_answer_breaks_off_is_a_warning(raw_gateway, dify):
    """The stop call is made in the background: its failure is logged as a warning, and its
    greenlet does not die with a traceback."""
    dify.answer, task_id = running_dify_answer(["one ", "two ", "three ", "four "])
    dify.pause = 0.05  # each word in its own read: the stop sequence cuts a running answer
    dify.stop_answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n" \
                       b"Connection: close\r\n\r\n{\"res"
    seen = len(raw_gateway.output())
    response = raw_ask(raw_gateway, False, stop=["three"])
    assert response.json()["choices"][0]["message"]["content"] == "one two "
    stop_path = f"/v1/chat-messages/{task_id}/stop"
    assert dify.wait_for(lambda calls: any(call.path == stop_path for call in calls), EVENT_WAIT)
    warning = f"stop call /chat-messages/{task_id}/stop failed"
    wait_for(lambda: warning in raw_gateway.output()[seen:], "the stop call's warning")
    log = raw_gateway.output()[seen:]
    assert "WARNING" in log and "Traceback" not in log and "ChunkedEncodingError" not in log


END = {"event": "message_end", "metadata": {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}}


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_a_data_line_nested_too_deep_to_decode_is_skipped(raw_gateway, dify, stream):
    """~200 KB of nested arrays: the JSON decoder gives up (RecursionError) on a line that is
    not an event anyway; it is skipped like any other undecodable line."""
    nested = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"
    dify.answer = with_length(nested + sse({"event": "message", "answer": "Hello"}, END))
    assert raw_outcome(raw_gateway, stream) == ("Hello", None)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_events_whose_data_is_not_an_object_count_as_having_none(raw_gateway, dify, stream):
    """text_chunk, text_replace and workflow_finished carry an object in `data`, message_end one
    in `metadata`; anything else there is as if it were absent. Each comes in a read of its own,
    most after the first text went out (a replacement without text, before any, changes nothing)."""
    events = [{"event": "text_replace", "data": [1]}, {"event": "message", "answer": "Hello"},
              {"event": "text_chunk", "data": "x"}, {"event": "workflow_finished", "data": "done"},
              {"event": "message", "answer": " world"}, {"event": "message_end", "metadata": [1]}]
    body = sse(*events)
    dify.answer = [SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(body)] + [sse(event) for event in events]
    dify.pause = 0.05
    assert raw_outcome(raw_gateway, stream) == ("Hello world", None)
