"""The urllib3 internals dify_io/connection.py relies on, checked against the installed urllib3
over a real connection, and the pin that keeps urllib3 below its next major release."""

from __future__ import annotations

import re
import socket
from importlib.metadata import version

import pytest
import requests
from packaging.requirements import Requirement

from dify_io.connection import detach
from tests.gateway_process import ROOT
from tests.raw_dify import RawDify

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")


@pytest.fixture
def raw_dify():
    dify = RawDify()
    dify.answer = CHUNKED
    yield dify
    dify.close()


def test_detach_gives_the_message_the_connection_and_the_way_back_to_the_pool(raw_dify):
    session = requests.Session()
    response = session.post(raw_dify.base_url + "/chat-messages", json={}, stream=True, timeout=10)
    pool = response.raw._pool
    body = detach(response)
    assert body.message.chunked is True and body.message.length is None and body.message.will_close is False
    assert isinstance(body.connection.sock, socket.socket)
    content = body.message.fp.read1(65536)  # what http.client read past the headers
    body.message.close()  # the reader keeps the connection, not http.client's buffer
    while b"0\r\n\r\n" not in content:
        content += body.connection.sock.recv(65536)
    assert content.startswith(b"5\r\nhello")
    idle = pool.num_connections
    body.put_back(body.connection)
    assert pool.pool.qsize() >= 1 and pool.num_connections == idle
    # The connection given back is the one the next call takes.
    again = session.post(raw_dify.base_url + "/chat-messages", json={}, stream=True, timeout=10)
    assert again.raw.connection is body.connection
    again.close()
    assert raw_dify.connections == 1


def test_after_detach_closing_the_responses_closes_nothing_the_reader_needs(raw_dify):
    """Dify will close the connection: the body is read through http.client's response, which
    urllib3's response (or its finalizer) must no longer close."""
    raw_dify.answer = CHUNKED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
    response = requests.post(raw_dify.base_url + "/chat-messages", json={}, stream=True, timeout=10)
    body = detach(response)
    assert body.message.will_close is True
    assert response.raw.closed
    response.close()
    del response
    assert not body.message.isclosed()  # (http.client handed the socket to it: connection.sock is None)
    content = b""
    while b"0\r\n\r\n" not in content:
        content += body.message.fp.read1(65536)
    assert content.startswith(b"5\r\nhello")
    body.message.close()
    body.connection.close()


def test_a_changed_urllib3_fails_by_name():
    class Changed:
        raw = type("Raw", (), {"connection": None})()

    with pytest.raises(RuntimeError, match="urllib3 release changed"):
        detach(Changed())


def test_urllib3_is_pinned_below_its_next_major_release():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if re.match(r"urllib3\b", line.strip())]
    assert len(pins) == 1
    specifier = pins[0].specifier
    installed = version("urllib3")
    major = int(installed.split(".")[0])
    assert specifier.contains(installed)
    assert not specifier.contains(f"{major + 1}.0.0"), "urllib3 needs an upper bound below its next major"
    assert any(spec.operator == "<" for spec in specifier)

