"""The http.client internal dify_io/connection.py's `forget_response` relies on, checked over a real
connection: a held stream's connection must not keep its response (and the headers parsed into
it), and must still serve the next call once given back to the pool."""

from __future__ import annotations

import requests

from dify_io.connection import detach, forget_response
from tests.raw_dify import RawDify

CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")


def test_the_connection_forgets_its_closed_response_and_serves_the_next_call():
    dify = RawDify()
    dify.answer = CHUNKED
    try:
        session = requests.Session()
        response = session.post(dify.base_url + "/chat-messages", json={}, stream=True, timeout=10)
        body = detach(response)
        assert body.connection._HTTPConnection__response is body.message  # the name http.client keeps it under
        content = body.message.fp.read1(65536)
        body.message.close()
        forget_response(body.connection)
        assert body.connection._HTTPConnection__response is None
        while b"0\r\n\r\n" not in content:
            content += body.connection.sock.recv(65536)
        body.put_back(body.connection)
        again = session.post(dify.base_url + "/chat-messages", json={}, timeout=10)
        assert again.content == b"hello" and dify.connections == 1
    finally:
        dify.close()
