"""Dify's answer framed as proxies may frame it: the gateway reads the body itself.

A raw fake Dify (tests/raw_dify.py) sends each framing byte for byte; the real gateway
relays it to a real HTTP client, streaming and not.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.raw_dify import sse_events
from tests.scenarios import user_message
from tests.test_http_surface import assert_openai_error, read_sse

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
EVENTS = sse_events(["Hello ", "wide ", "world"])
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


@pytest.fixture(scope="module")
def raw_gateway(raw_dify, start_gateway):
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", TIMEOUT="5")


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """`body` cut into chunks of the given sizes (the last takes the rest), with extensions."""
    pieces, start = [], 0
    for size in [*sizes, len(body)]:
        piece, start = body[start:start + size], start + size
        if piece:
            pieces.append(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
    return b"".join(pieces) + b"0\r\n\r\n"


def ask(gateway, stream: bool) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30, stream=stream,
                         json={"model": "raw-chat", "stream": stream, "messages": user_message("hi")})


def streamed(response: requests.Response) -> tuple[str, dict | None]:
    assert response.status_code == 200, response.text
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    text = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p.get("choices"))
    return text, payloads[-1].get("error")


@pytest.mark.parametrize("answer", [
    SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS,
    SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(EVENTS, [7, 1, 150, 2, 90]),  # cuts inside events
    SSE_HEAD + b"Connection: close\r\n\r\n" + EVENTS,  # the body ends when the connection closes
], ids=["content-length", "chunked", "until-close"])
def test_every_framing_of_the_answer_is_relayed(raw_dify, raw_gateway, answer):
    raw_dify.answer = answer
    assert streamed(ask(raw_gateway, stream=True)) == ("Hello wide world", None)
    assert ask(raw_gateway, stream=False).json()["choices"][0]["message"]["content"] == "Hello wide world"


def test_a_body_of_known_length_leaves_the_connection_reusable(raw_dify, raw_gateway):
    raw_dify.answer = SSE_HEAD + b"Content-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS
    ask(raw_gateway, stream=False)
    before = raw_dify.connections
    for _ in range(3):
        assert ask(raw_gateway, stream=False).status_code == 200
    assert raw_dify.connections == before


def test_bad_chunk_framing_mid_stream_keeps_the_text_and_ends_with_an_error(raw_dify, raw_gateway):
    first = EVENTS.split(b"\n\n")[0] + b"\n\n"
    raw_dify.answer = SSE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(first, [])[:-5] + b"zz\r\nnot a chunk"
    text, error = streamed(ask(raw_gateway, stream=True))
    assert text == "Hello " and error["code"] == "upstream_error"
    assert_openai_error(ask(raw_gateway, stream=False), 502, "upstream_error")


def test_a_body_cut_short_of_its_length_is_an_error(raw_dify, raw_gateway):
    raw_dify.answer = SSE_HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (len(EVENTS) + 100) + EVENTS
    text, error = streamed(ask(raw_gateway, stream=True))
    assert text == "Hello wide world" and error is None  # message_end came: the answer is whole
    cut = EVENTS.index(b"\n\n") + 10  # inside the second event
    raw_dify.answer = SSE_HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(EVENTS) + EVENTS[:cut]
    text, error = streamed(ask(raw_gateway, stream=True))
    assert text == "Hello " and error["code"] == "upstream_disconnected"


def event_pieces(framing: bytes) -> list[bytes]:
    """EVENTS one event a piece, each piece chunk-framed when `framing` is chunked."""
    events = [event + b"\n\n" for event in EVENTS.split(b"\n\n") if event]
    if b"chunked" not in framing:
        return events
    return [b"%x\r\n%s\r\n" % (len(event), event) for event in events] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("head", [
    SSE_HEAD + b"Connection: close\r\n\r\n",  # the body ends when the connection closes
    SSE_HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(EVENTS),
    SSE_HEAD + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",  # HTTP/1.0: no keep-alive either
], ids=["until-close", "content-length", "chunked", "http-1.0"])
def test_an_answer_on_a_connection_dify_will_close_is_read_in_many_pieces(raw_dify, raw_gateway, head, stream):
    """http.client hands such a body its own reader; every event comes in a read of its own, so
    the body is read many times after the requests and urllib3 response objects were let go."""
    raw_dify.answer = [head, *event_pieces(head)]
    raw_dify.pause, raw_dify.close_after = 0.05, True  # separate reads, then the connection closes
    try:
        response = ask(raw_gateway, stream=stream)
        if stream:
            assert streamed(response) == ("Hello wide world", None)
        else:
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "Hello wide world"
    finally:
        raw_dify.pause, raw_dify.close_after = 0.0, False
