"""Unit tests: Dify SSE bytes -> events."""

import pytest

from core.response.sse import PING, MalformedStream, SSEDecoder


def test_events_split_across_reads_are_joined():
    decoder = SSEDecoder()
    wire = 'data: {"event":"message","answer":"你好"}\n\nevent: ping\n\ndata: {"event":"message_end"}\n\n'.encode()
    events = []
    for index in range(len(wire)):  # one byte per read: cuts inside the multi-byte characters
        events += decoder.feed(wire[index:index + 1])
    assert events == [{"event": "message", "answer": "你好"}, PING, {"event": "message_end"}]


def test_crlf_spaced_json_and_no_space_after_colon():
    events = SSEDecoder().feed(b'data:{"event": "message", "answer": "\\u4f60"}\r\n\r\n')
    assert events == [{"event": "message", "answer": "你"}]


def test_lines_that_are_not_events_are_skipped():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: not json\n\n: comment\nevent: foo\nid: 3\ndata: [1,2]\n\n") == []


def test_last_line_without_newline_is_decoded_at_close():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"event":"message_end"}') == []
    assert decoder.close() == [{"event": "message_end"}]


def test_an_endless_line_is_refused(monkeypatch):
    monkeypatch.setattr("core.response.sse.MAX_EVENT_BYTES", 100)
    with pytest.raises(MalformedStream):
        SSEDecoder().feed(b"data: " + b"x" * 200)
