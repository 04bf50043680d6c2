"""Unit tests: HTTP body framing undone from network reads of any size."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.response.http_body import MAX_LINE_BYTES, ChunkedBody, LengthBody, MalformedBody, UntilClose


def chunked(pieces: list[bytes], trailer: bytes = b"") -> bytes:
    """The chunked coding of `pieces`, written independently of the decoder."""
    wire = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece)
    return wire + b"0\r\n" + trailer + b"\r\n"


def feed_in_pieces(body, wire: bytes, cuts: list[int]) -> bytes:
    content, start = [], 0
    for cut in sorted(set(cuts)) + [len(wire)]:
        content.append(body.feed(wire[start:cut]))
        start = cut
    return b"".join(content)


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(0, 3000), max_size=12))
def test_chunked_content_survives_any_cut_of_the_wire(pieces, cuts):
    wire = chunked(pieces)
    body = ChunkedBody()
    assert feed_in_pieces(body, wire, [cut for cut in cuts if cut < len(wire)]) == b"".join(pieces)
    assert body.ended


def test_one_byte_reads_with_extensions_and_trailers():
    wire = b"5;name=value\r\nhello\r\n1\r\n \r\n0\r\nX-Trailer: 1\r\n\r\n"
    body = ChunkedBody()
    content = b"".join(body.feed(wire[index:index + 1]) for index in range(len(wire)))
    assert content == b"hello " and body.ended


def test_the_body_is_not_ended_before_the_last_blank_line():
    body = ChunkedBody()
    assert body.feed(b"3\r\nabc\r\n0\r\n") == b"abc"
    assert not body.ended
    assert body.feed(b"\r\n") == b"" and body.ended


def test_bytes_after_the_end_are_not_content():
    body = ChunkedBody()
    assert body.feed(b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n") == b"a"
    assert body.ended


@pytest.mark.parametrize("wire", [
    b"zz\r\nabc\r\n",  # not hex
    b"0x3\r\nabc\r\n",  # int() would take these three
    b"+3\r\nabc\r\n",
    b"1_0\r\nabc\r\n",
    b"\r\nabc\r\n",  # no size at all
    b"2\r\nabc\r\n",  # data longer than its size
])
def test_malformed_framing_is_refused(wire):
    with pytest.raises(MalformedBody):
        ChunkedBody().feed(wire)


def test_an_endless_size_line_is_refused():
    with pytest.raises(MalformedBody):
        ChunkedBody().feed(b"1" * (MAX_LINE_BYTES + 1))


def test_length_body_stops_at_its_length():
    body = LengthBody(5)
    assert body.feed(b"abc") == b"abc" and not body.ended
    assert body.feed(b"defgh") == b"de" and body.ended
    assert LengthBody(0).ended


def test_until_close_passes_everything():
    body = UntilClose()
    assert body.feed(b"abc") == b"abc" and not body.ended


def test_content_before_a_fault_in_the_same_read_comes_with_the_error():
    with pytest.raises(MalformedBody) as caught:
        ChunkedBody().feed(b"3\r\nabc\r\nzz\r\n")
    assert caught.value.content == b"abc"
