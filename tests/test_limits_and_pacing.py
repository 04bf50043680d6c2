"""Smooth output on a real stream, admission control, size limits and the stream deadline."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import EVENT_WAIT, raw_chat_request, running_dify_answer, user_message, wait_for
from tests.test_http_surface import assert_openai_error, read_sse

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
# 4 bursts of 15 words, 400 ms apart; then the run stays open (pings only) until it is stopped.
BURSTY = {"tokens": 60, "burst": 15, "delay_ms": 400, "never_end": True}
BURSTY_TEXT = "".join(f"w{i} " for i in range(1, 61))


def content_writes(gateway, scenario: dict, text: str) -> list[str]:
    """The content of each write of a stream that carries some, read until `text` is complete.

    With `never_end` Dify's run stays open after its last word, so nothing is pushed out by the
    end of the stream: the whole text must come while Dify is still running."""
    deadline = time.monotonic() + EVENT_WAIT
    body = {"model": "demo-chat", "stream": True, "messages": user_message("x", **scenario)}
    with requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, stream=True, timeout=30,
                       json=body) as response:
        assert response.status_code == 200, response.text
        writes: list[str] = []
        for raw in response.iter_content(chunk_size=None):  # one HTTP chunk: one write of the gateway
            content = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                              for line in raw.decode().split("\n") if line.startswith("data: {"))
            if content:
                writes.append(content)
            if "".join(writes) == text:
                return writes
            assert time.monotonic() < deadline, f"the text is not complete within {EVENT_WAIT} s: {writes}"
    raise AssertionError(f"the stream ended before the text was complete: {writes}")


@pytest.fixture(scope="module")
def unpaced(start_gateway):
    return start_gateway(SMOOTH_OUTPUT="off")


def test_bursts_are_spread_and_never_held_back(gateway, unpaced):
    """Unpaced, each of Dify's bursts is one write; paced, the later bursts come in many small
    pieces. And the pacer holds nothing back waiting for more: the whole text arrives while Dify's
    run is still open (how soon, to the millisecond, test_smooth checks on a fake clock)."""
    raw_writes = content_writes(unpaced, BURSTY, BURSTY_TEXT)
    paced_writes = content_writes(gateway, BURSTY, BURSTY_TEXT)
    assert len(raw_writes) <= 4
    assert len(paced_writes) >= 13


def test_steady_streams_pass_straight_through(gateway):
    writes = content_writes(gateway, {"tokens": 20, "delay_ms": 20}, "".join(f"w{i} " for i in range(1, 21)))
    assert len(writes) >= 15


@pytest.fixture(scope="module")
def small_gateway(start_gateway):
    return start_gateway(MAX_CONCURRENT_REQUESTS="2", MAX_REQUEST_MB="0.05", MAX_MESSAGES="3",
                         MAX_PROMPT_CHARS="200")


def test_admission_beyond_the_limit_is_503_with_retry_after(small_gateway):
    held = []
    request = raw_chat_request({"model": "demo-chat", "stream": True,
                                "messages": user_message("hold", never_end=True, ping_interval_s=0.5)})
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", small_gateway.port), timeout=10)
            sock.sendall(request)
            assert b"200 OK" in sock.recv(65536)
            held.append(sock)
        refused = requests.post(small_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=10,
                                json={"model": "demo-chat", "messages": user_message("third")})
        assert_openai_error(refused, 503, "overloaded")
        assert refused.headers["Retry-After"] == "1" and refused.headers["x-should-retry"] == "true"
        assert requests.get(small_gateway.base_url + "/models", headers=HEADERS, timeout=10).status_code == 200
    finally:
        for sock in held:
            sock.close()

    def admitted():  # the slots come back when the streams end
        response = requests.post(small_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=10,
                                 json={"model": "demo-chat", "messages": user_message("again")})
        return response.status_code == 200

    wait_for(admitted, "admission slots released")


def test_size_limits(small_gateway):
    url = small_gateway.base_url + "/chat/completions"
    big = requests.post(url, headers=HEADERS, timeout=10, data=json.dumps(
        {"model": "demo-chat", "messages": [{"role": "user", "content": "x" * 100_000}]}))
    assert_openai_error(big, 413, "request_too_large")
    many = requests.post(url, headers=HEADERS, timeout=10, json={
        "model": "demo-chat", "messages": [{"role": "user", "content": "x"}] * 4})
    assert_openai_error(many, 400, "context_length_exceeded", "messages")
    long = requests.post(url, headers=HEADERS, timeout=10, json={
        "model": "demo-chat", "messages": [{"role": "user", "content": "y" * 300}]})
    assert_openai_error(long, 400, "context_length_exceeded", "messages")
    prompt = requests.post(small_gateway.base_url + "/completions", headers=HEADERS, timeout=10,
                           json={"model": "demo-chat", "prompt": "z" * 300})
    assert_openai_error(prompt, 400, "context_length_exceeded", "prompt")


@pytest.fixture(scope="module")
def deadline_gateway(raw_dify, start_gateway):
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", STREAM_DEADLINE="2")


def test_stream_deadline_ends_an_endless_stream_and_stops_its_task(raw_dify, deadline_gateway):
    """Dify's run never ends and keeps pinging: STREAM_DEADLINE ends the answer, and the run's
    own task is stopped with its user (the raw fake Dify names the task)."""
    raw_dify.answer, task_id = running_dify_answer(["You ", "said: ", "forever"], pings=200)
    raw_dify.pause = 0.3  # a ping every 0.3 s, for a minute
    before = len(raw_dify.calls)
    response = requests.post(deadline_gateway.base_url + "/chat/completions", headers=HEADERS, stream=True, timeout=30,
                             json={"model": "raw-chat", "stream": True, "messages": user_message("forever")})
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:]) == {"error": {
        "message": "Dify did not answer in time: the stream reached its deadline (STREAM_DEADLINE)",
        "type": "server_error", "param": None, "code": "upstream_timeout"}}
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in lines[:-2] if line.startswith("data: {"))
    assert text == "You said: forever"
    stopped = raw_dify.wait_for(lambda calls: any(call.path.endswith("/stop") for call in calls[before:]), EVENT_WAIT)
    assert stopped, f"no stop call within {EVENT_WAIT} s"
    run, stop = [call for call in raw_dify.calls[before:] if call.path.startswith("/v1/chat-messages")]
    assert (run.path, stop.method, stop.path, stop.key) == (
        "/v1/chat-messages", "POST", f"/v1/chat-messages/{task_id}/stop", "app-raw")
    assert json.loads(stop.body) == {"user": json.loads(run.body)["user"]}
