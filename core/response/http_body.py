"""HTTP/1.1 response body framing, decoded from network reads of any size.

The gateway reads Dify's streaming answers straight from the socket (dify_io/upstream.py
says why), so it undoes the body's framing itself: the chunked transfer coding Dify's
server uses, a Content-Length, or a body that ends when the connection closes. Each
`feed(bytes)` returns the content bytes the piece carried; `ended` turns true once the
body is complete.
"""

from __future__ import annotations

# A chunk-size line (with its extensions) or trailer line longer than this is not HTTP.
MAX_LINE_BYTES = 4096
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class MalformedBody(ValueError):
    """The bytes cannot be the body framing the headers announced. `content`: what the same
    piece carried before the fault, still to be delivered."""

    def __init__(self, message: str, content: bytes = b"") -> None:
        super().__init__(message)
        self.content = content


class ChunkedBody:
    """`Transfer-Encoding: chunked` (RFC 9112 section 7.1); trailers are read and dropped."""

    __slots__ = ("ended", "_left", "_line", "_after_data", "_in_trailer")

    def __init__(self) -> None:
        self.ended = False
        self._left = 0  # bytes of the current chunk's data still to come
        self._line = b""  # a size or trailer line cut by the end of a read
        self._after_data = False  # the CRLF that ends a chunk's data is next
        self._in_trailer = False  # the last chunk was seen: trailer lines up to a blank one

    def feed(self, data: bytes) -> bytes:
        content = []
        pos, size = 0, len(data)
        try:
            while pos < size and not self.ended:
                if self._left:
                    end = min(size, pos + self._left)
                    content.append(data[pos:end])
                    self._left -= end - pos
                    self._after_data = not self._left
                    pos = end
                    continue
                eol = data.find(b"\n", pos)
                if eol < 0:
                    self._keep_partial_line(data[pos:])
                    break
                line, pos = self._line + data[pos:eol], eol + 1
                self._line = b""
                self._end_line(line.rstrip(b"\r"))
        except MalformedBody as exc:
            raise MalformedBody(str(exc), b"".join(content)) from None
        return b"".join(content)

    def _keep_partial_line(self, piece: bytes) -> None:
        self._line += piece
        if len(self._line) > MAX_LINE_BYTES:
            raise MalformedBody("a chunk-size line is too long")

    def _end_line(self, line: bytes) -> None:
        if self._after_data:
            if line:
                raise MalformedBody("chunk data is longer than its size line says")
            self._after_data = False
        elif self._in_trailer:
            self.ended = not line
        else:
            self._left = _chunk_size(line)
            self._in_trailer = not self._left


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or digits.strip(_HEX_DIGITS):  # int() alone would take "0x1a", "+1a", "1_a"
        raise MalformedBody(f"bad chunk-size line {line[:40]!r}")
    return int(digits, 16)


class LengthBody:
    """A body of `Content-Length` bytes; anything after them is not part of it."""

    __slots__ = ("ended", "_left")

    def __init__(self, length: int) -> None:
        self._left = length
        self.ended = length == 0

    def feed(self, data: bytes) -> bytes:
        content = data[:self._left]
        self._left -= len(content)
        self.ended = not self._left
        return content


class UntilClose:
    """A body that ends when the server closes the connection (no length, not chunked)."""

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        return data
