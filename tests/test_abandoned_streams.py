"""Streams their client abandons: it leaves before Dify named its task, or stops reading. Either
way the Dify task is stopped (with the run's user) and the stream's admission slot freed.

Dify is the raw fake Dify (tests/raw_dify.py), which holds its answer until the test lets it go,
and names the task the gateway must stop.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
import requests

from tests import raw_dify as raw_dify_module
from tests.conftest import CLIENT_KEY
from tests.raw_dify import RawDify
from tests.scenarios import EVENT_WAIT, raw_chat_request, running_dify_answer, user_message, wait_for
from tests.test_operations import scrape, value

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}


def stop_call(dify: RawDify, task_id: str, before: int):
    """The stop call for `task_id` among the calls after the first `before`, once it arrived (the
    test fails if it does not)."""
    path = f"/v1/chat-messages/{task_id}/stop"
    assert dify.wait_for(lambda calls: any(call.path == path for call in calls[before:]), EVENT_WAIT), \
        f"no stop call for {task_id} within {EVENT_WAIT} s"
    return next(call for call in dify.calls[before:] if call.path == path)


def run_call(dify: RawDify, before: int):
    [run] = [call for call in dify.calls[before:] if call.path == "/v1/chat-messages"]
    return run


def chat_body(stream: bool = True, **body) -> dict:
    return {"model": "raw-chat", "stream": stream, "messages": user_message("hi"), **body}


# --- the client leaves before Dify named its task ------------------------------------------------


@pytest.fixture(scope="module")
def early_gateway(raw_dify, start_gateway):
    """Commits to 200 at once (FIRST_EVENT_WAIT=0), before Dify's first event."""
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", FIRST_EVENT_WAIT="0",
                         TIMEOUT="10")


def test_a_client_gone_before_dify_named_its_task_still_gets_it_stopped(raw_dify, early_gateway):
    """Dify holds its headers (they come with the first event) until the gateway has closed the
    stream; then the first event names the task, which the gateway stops, with the run's user."""
    release = threading.Event()
    pieces, task_id = running_dify_answer(["late "])
    raw_dify.answer = [release, *pieces]
    before = len(raw_dify.calls)
    disconnects = value(scrape(early_gateway), "opendify_client_disconnects_total")
    try:
        with socket.create_connection(("127.0.0.1", early_gateway.port), timeout=10) as client:
            client.sendall(raw_chat_request(chat_body()))
            assert b" 200 OK" in client.recv(65536)  # committed, Dify still silent
            assert raw_dify.wait_for(lambda calls: any(call.path == "/v1/chat-messages" for call in calls[before:]),
                                     EVENT_WAIT), "the Dify call never came"
        wait_for(lambda: value(scrape(early_gateway), "opendify_client_disconnects_total") > disconnects,
                 "the gateway to close the stream")
    finally:
        release.set()  # Dify answers only now
    stop = stop_call(raw_dify, task_id, before)
    assert json.loads(stop.body) == {"user": json.loads(run_call(raw_dify, before).body)["user"]}
    assert stop.key == "app-raw"


# --- the client stops reading ------------------------------------------------------------------


@pytest.fixture(scope="module")
def write_limited_gateway(raw_dify, start_gateway):
    """A write to the client may take at most TIMEOUT (2 s) here; one stream at a time."""
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", TIMEOUT="2",
                         SMOOTH_OUTPUT="off", MAX_CONCURRENT_REQUESTS="1")


def test_a_client_that_stops_reading_has_its_stream_ended_and_its_task_stopped(raw_dify, write_limited_gateway):
    """A client with a tiny receive buffer asks for a long answer and reads nothing: once a write
    to it made no progress for TIMEOUT, the stream ends as if the client had left. Dify's task is
    stopped and the admission slot (MAX_CONCURRENT_REQUESTS=1) serves the next request."""
    raw_dify.answer, task_id = running_dify_answer(["w" * 4000 + " "] * 1000)  # 4 MB, and the run goes on
    before = len(raw_dify.calls)
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting: the window stays small
        client.connect(("127.0.0.1", write_limited_gateway.port))
        client.sendall(raw_chat_request(chat_body()))
        stop = stop_call(raw_dify, task_id, before)  # the client never reads
        assert json.loads(stop.body) == {"user": json.loads(run_call(raw_dify, before).body)["user"]}
        raw_dify.answer = pieces_of_a_whole_answer()
        reply = requests.post(write_limited_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30,
                              json=chat_body(stream=False))
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "one two"
        assert "Traceback" not in write_limited_gateway.output()  # ended as a vanished client is
    finally:
        client.close()


def pieces_of_a_whole_answer(words: tuple[str, ...] = ("one ", "two")) -> list[bytes]:
    """A finished chunked answer, one event a piece."""
    pieces, _ = running_dify_answer(list(words))
    end = (b'data: {"event": "message_end", "task_id": "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d", '
           b'"metadata": {}}\n\n')
    return [*pieces, b"%x\r\n%s\r\n" % (len(end), end), b"0\r\n\r\n"]


def read_chunked_response(client: socket.socket) -> bytes:
    """One whole chunked response from a raw socket (its head and body)."""
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        piece = client.recv(65536)
        assert piece, f"the connection closed mid-response: {data[-200:]!r}"
        data += piece
    return data


def read_length_response(client: socket.socket) -> tuple[bytes, bytes]:
    """One whole response framed by Content-Length: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += client.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += client.recv(65536)
    return head, body


def test_the_write_limit_bounds_each_write_not_the_stream_nor_the_next_request(raw_dify, write_limited_gateway):
    """Dify takes longer than TIMEOUT for the whole answer (never that long between two events):
    the stream is whole, and the same keep-alive connection then serves the next request."""
    raw_dify.answer = pieces_of_a_whole_answer(("a ",) * 8 + ("end",))
    raw_dify.pause = 0.4  # about 4 s in all, 0.4 s apart
    try:
        with socket.create_connection(("127.0.0.1", write_limited_gateway.port), timeout=30) as client:
            client.sendall(raw_chat_request(chat_body()))
            streamed = read_chunked_response(client)
            assert b" 200 OK" in streamed.split(b"\r\n", 1)[0] and b"data: [DONE]" in streamed
            assert b'"finish_reason":"stop"' in streamed and b'"error"' not in streamed
            raw_dify.pause = 0.0
            raw_dify.answer = pieces_of_a_whole_answer()
            client.sendall(raw_chat_request(chat_body(stream=False)))
            head, body = read_length_response(client)
            assert b" 200 OK" in head.split(b"\r\n", 1)[0]
            assert json.loads(body)["choices"][0]["message"]["content"] == "one two"
    finally:
        raw_dify.pause = 0.0


# --- answers that are not streams: a JSON body, speech ---------------------------------------------


def never_reading_client(port: int, request: bytes) -> socket.socket:
    """A client with a tiny receive window that sends `request` and then reads nothing."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connecting: the window stays small
    client.connect(("127.0.0.1", port))
    client.sendall(request)
    return client


def test_a_json_answer_to_a_client_that_reads_nothing_frees_its_slot(raw_dify, write_limited_gateway):
    """The JSON body of an 8 MB answer to a client that reads nothing: its one write may take
    TIMEOUT, then the connection ends and the admission slot (MAX_CONCURRENT_REQUESTS=1) serves
    the next request."""
    raw_dify.answer = pieces_of_a_whole_answer(("w" * 8000 + " ",) * 1000)
    before = len(raw_dify.calls)
    client = never_reading_client(write_limited_gateway.port, raw_chat_request(chat_body(stream=False)))
    try:
        assert raw_dify.wait_for(lambda calls: any(call.path == "/v1/chat-messages" for call in calls[before:]),
                                 EVENT_WAIT), "the Dify call never came"
        raw_dify.answer = pieces_of_a_whole_answer()

        def next_request_served() -> bool:
            reply = requests.post(write_limited_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30,
                                  json=chat_body(stream=False))
            if reply.status_code == 503:
                return False  # the slot is still taken
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"] == "one two"

        wait_for(next_request_served, "the slot of the stuck JSON answer")
        assert "Traceback" not in write_limited_gateway.output()
    finally:
        client.close()


@pytest.fixture(scope="module")
def write_limited_speech(raw_dify, start_gateway):
    """As write_limited_gateway, with text to speech on in the raw fake Dify's app."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(raw_dify_module.PARAMETERS, "text_to_speech", {"enabled": True})
        yield start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", TIMEOUT="2",
                            MAX_CONCURRENT_REQUESTS="1")


def speech_answer(size: int) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Length: %d\r\n\r\n%s" % (size, b"\xff" * size)


def test_speech_to_a_client_that_reads_nothing_frees_its_slot(raw_dify, write_limited_speech):
    """8 MB of speech relayed to a client that reads nothing: a write that makes no progress for
    TIMEOUT ends the relay, and the admission slot serves the next request."""
    raw_dify.answer = speech_answer(8 * 1024 * 1024)
    before = len(raw_dify.calls)
    body = json.dumps({"model": "raw-chat", "input": "Hello", "voice": "alloy"}).encode()
    head = b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % CLIENT_KEY.encode()
    request = head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    client = never_reading_client(write_limited_speech.port, request)
    try:
        assert raw_dify.wait_for(lambda calls: any(call.path == "/v1/text-to-audio" for call in calls[before:]),
                                 EVENT_WAIT), "the Dify call never came"
        raw_dify.answer = speech_answer(3)

        def next_request_served() -> bool:
            reply = requests.post(write_limited_speech.base_url + "/audio/speech", headers=HEADERS, timeout=30,
                                  json={"model": "raw-chat", "input": "Hi", "voice": "alloy"})
            if reply.status_code == 503:
                return False  # the slot is still taken
            assert reply.status_code == 200, reply.text
            return reply.content == b"\xff" * 3

        wait_for(next_request_served, "the slot of the stuck speech")
        assert "Traceback" not in write_limited_speech.output()
    finally:
        client.close()
