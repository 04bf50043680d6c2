"""What a client sees for each kind of upstream fault; the worker always survives."""

from __future__ import annotations

import json

import pytest
import requests

from tests.conftest import CLIENT_KEY
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
