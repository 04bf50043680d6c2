"""A minimal HTTP/1.1 client over one (gevent-patched) socket.

`requests` costs a few hundred microseconds of client CPU per call; on a 2-core machine
that would make the load client the bottleneck. This client sends pre-built request
bytes and parses only what a benchmark needs: the status, the framing headers, and a
body that is chunked, sized by Content-Length, or delimited by the connection closing.
Connections are kept alive between requests when the server allows it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

RECV_SIZE = 65536


class ConnectionClosed(Exception):
    """The server closed the connection before the response was complete."""


def build_request(method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """The request bytes, built once and sent as they are for every repetition."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reusable = True
        self._buf = b""
        self._pos = 0

    def close(self) -> None:
        self.reusable = False
        self.sock.close()

    def request(self, raw: bytes) -> Response:
        """Send a request and read the status line and headers."""
        self.sock.sendall(raw)
        return self.read_head()

    # -- buffered reading ------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionClosed("the server closed the connection")
        if self._pos:
            self._buf = self._buf[self._pos:] + data
            self._pos = 0
        else:
            self._buf += data

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n", self._pos)) < 0:
            self._fill()
        line = self._buf[self._pos:end]
        self._pos = end + 2
        return line

    def _exact(self, size: int) -> bytes:
        while len(self._buf) - self._pos < size:
            self._fill()
        data = self._buf[self._pos:self._pos + size]
        self._pos += size
        return data

    def _until_close(self) -> Iterator[bytes]:
        if self._pos < len(self._buf):
            yield self._buf[self._pos:]
        self._buf, self._pos = b"", 0
        while data := self.sock.recv(RECV_SIZE):
            yield data

    def read_head(self) -> Response:
        status_line = self._line()
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionClosed(f"not an HTTP status line: {status_line[:80]!r}")
        headers = {}
        while line := self._line():
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.reusable = False
        return Response(self, int(parts[1]), headers)


class Response:
    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self.conn = conn
        self.status = status
        self.headers = headers

    def chunks(self) -> Iterator[bytes]:
        """The body as it arrives: one item per HTTP chunk (chunked) or per read (otherwise)."""
        conn = self.conn
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size = int(conn._line().split(b";", 1)[0], 16)
                if size == 0:
                    while conn._line():  # trailers up to the blank line
                        pass
                    return
                yield conn._exact(size)
                conn._line()
        elif "content-length" in self.headers:
            yield conn._exact(int(self.headers["content-length"]))
        else:
            conn.reusable = False
            yield from conn._until_close()

    def read(self) -> bytes:
        return b"".join(self.chunks())
