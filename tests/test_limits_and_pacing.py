"""Smooth output on a real stream, admission control, size limits and the stream deadline."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import raw_chat_request, user_message
from tests.test_http_surface import assert_openai_error

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
BURSTY = {"tokens": 60, "burst": 15, "delay_ms": 400}  # 4 bursts of 15 words, 400 ms apart


def arrivals(gateway, scenario) -> tuple[list[float], str, float]:
    """(arrival time of each content-carrying write, the text, when the stream ended)."""
    started = time.monotonic()
    response = requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, stream=True, timeout=30,
                             json={"model": "demo-chat", "stream": True, "messages": user_message("x", **scenario)})
    times, text = [], ""
    for raw in response.iter_content(chunk_size=None):
        pieces = [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                  for line in raw.decode().split("\n") if line.startswith("data: {")]
        if any(pieces):
            times.append(time.monotonic() - started)
            text += "".join(pieces)
    return times, text, time.monotonic() - started


def writes_after_first_burst(times: list[float]) -> int:
    return sum(1 for t in times if t > times[0] + 0.2)


@pytest.fixture(scope="module")
def unpaced(start_gateway):
    return start_gateway(SMOOTH_OUTPUT="off")


def test_bursts_are_spread_without_slowing_the_stream(gateway, unpaced):
    paced_times, paced_text, paced_end = arrivals(gateway, BURSTY)
    raw_times, raw_text, raw_end = arrivals(unpaced, BURSTY)
    assert paced_text == raw_text == "".join(f"w{i} " for i in range(1, 61))
    # Unpaced: one write per burst. Paced: the later bursts arrive in many small pieces.
    assert writes_after_first_burst(raw_times) <= 4
    assert writes_after_first_burst(paced_times) >= 12
    # ... and the end is not held back (the pacer spreads text until the next burst is due).
    assert paced_end <= raw_end + 0.5


def test_steady_streams_pass_straight_through(gateway):
    times, text, _ = arrivals(gateway, {"tokens": 20, "delay_ms": 20})
    assert text == "".join(f"w{i} " for i in range(1, 21)) and len(times) >= 15


@pytest.fixture(scope="module")
def small_gateway(start_gateway):
    return start_gateway(MAX_CONCURRENT_REQUESTS="2", MAX_REQUEST_MB="0.05", MAX_MESSAGES="3",
                         MAX_PROMPT_CHARS="200", STREAM_DEADLINE="2")


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
    deadline = time.monotonic() + 5
    while True:  # the slots come back when the streams end
        response = requests.post(small_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=10,
                                 json={"model": "demo-chat", "messages": user_message("again")})
        if response.status_code == 200:
            break
        assert time.monotonic() < deadline, "admission slots were not released"
        time.sleep(0.1)


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


def test_stream_deadline_ends_an_endless_stream(small_gateway, recorded):
    started = time.monotonic()
    response = requests.post(small_gateway.base_url + "/chat/completions", headers=HEADERS, stream=True, timeout=30,
                             json={"model": "demo-chat", "stream": True,
                                   "messages": user_message("forever", never_end=True, ping_interval_s=0.3)})
    lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert 1.5 < time.monotonic() - started < 10
    assert json.loads(lines[-2][6:])["error"]["code"] == "upstream_timeout" and lines[-1] == "data: [DONE]"
    deadline = time.monotonic() + 5
    while not recorded.stops():
        assert time.monotonic() < deadline, "the Dify task was not stopped"
        time.sleep(0.05)
