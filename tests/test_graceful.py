"""Graceful shutdown and reload with a stream in flight (gunicorn's SIGTERM and SIGHUP)."""

from __future__ import annotations

import json
import signal
import time

import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import user_message

SLOW_STREAM = {"model": "demo-chat", "stream": True,
               "messages": user_message("x", tokens=25, delay_ms=100)}  # about 2.5 s


def open_stream(gateway):
    response = requests.post(gateway.base_url + "/chat/completions", json=SLOW_STREAM, stream=True, timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    lines = response.iter_lines(decode_unicode=True)
    first = next(line for line in lines if line.startswith("data: {"))
    return response, lines, first


def finish(lines, first) -> str:
    text = ""
    for line in [first, *lines]:
        if line.startswith("data: {"):
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        elif line == "data: [DONE]":
            return text
    raise AssertionError("the stream ended without [DONE]")


def test_sigterm_lets_the_stream_in_flight_finish(start_gateway):
    gateway = start_gateway(GRACEFUL_TIMEOUT="20")
    response, lines, first = open_stream(gateway)
    gateway.signal(signal.SIGTERM)
    assert finish(lines, first) == "".join(f"w{i} " for i in range(1, 26))
    gateway.process.wait(20)
    assert gateway.process.returncode == 0


def test_sighup_reloads_while_the_stream_finishes(start_gateway):
    gateway = start_gateway(GRACEFUL_TIMEOUT="20")
    [old_worker] = gateway.worker_pids()
    response, lines, first = open_stream(gateway)
    gateway.signal(signal.SIGHUP)
    assert finish(lines, first) == "".join(f"w{i} " for i in range(1, 26))
    deadline = time.monotonic() + 20
    while old_worker in gateway.worker_pids() or not gateway.worker_pids():
        assert time.monotonic() < deadline, "the old worker did not leave"
        time.sleep(0.1)
    reply = requests.post(gateway.base_url + "/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                          json={"model": "demo-chat", "messages": user_message("after reload")})
    assert reply.json()["choices"][0]["message"]["content"] == "You said: after reload"
