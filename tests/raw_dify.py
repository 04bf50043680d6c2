"""A fake Dify that writes its HTTP responses byte by byte as a test sets them.

The emulator runs on gunicorn, which always frames a streamed body with chunked encoding.
Behind a proxy Dify's answer may come with a Content-Length, or end when the connection
closes, and a broken proxy may send bad framing: this server sends whatever raw bytes the
test chose for the call that runs an app (`POST /chat-messages`, `/completion-messages`,
`/workflows/run`), and answers `/info`, `/parameters` and the stop routes.

By default it serves one chat app whatever the key; `apps` gives each app key its own
`/info` (name and mode). `answer` may also be a list of pieces: each is sent on its own
(TCP_NODELAY, `pause` seconds apart) so that the gateway meets them as separate reads; a
`threading.Event` among them holds the rest of the answer until the test sets it. `stop_answer`,
when set, is the raw response to the stop calls (by default a JSON success). Every request is
recorded in `calls`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

APP_INFO = {"name": "raw-chat", "description": "", "tags": [], "mode": "chat", "author_name": "test"}
PARAMETERS = {"opening_statement": "", "user_input_form": [], "file_upload": {}, "system_parameters": {}}
# The longest a held answer waits for its test (which fails long before).
HOLD_LIMIT = 120.0


def sse_events(answer_words: list[str]) -> bytes:
    """Dify's events for a short chat answer, as one SSE text."""
    ids = {"conversation_id": "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11", "created_at": 1735689600,
           "message_id": "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44", "task_id": "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d"}
    events = [{"event": "message", "answer": word, **ids} for word in answer_words]
    events.append({"event": "message_end", "metadata": {"usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                                  "total_tokens": 3}}, **ids})
    return b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events)


def json_response(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)


@dataclass(frozen=True)
class Call:
    """One request the fake Dify received."""

    method: str
    path: str  # with the query string
    key: str  # the app key of `Authorization: Bearer <key>`
    body: bytes


def requests_on(conn: socket.socket) -> Iterator[Call]:
    """The requests of one keep-alive connection, one after the other, until the client closes
    it (bodies framed by Content-Length, as the gateway sends them)."""
    pending = b""
    while True:
        while b"\r\n\r\n" not in pending:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
        head, _, pending = pending.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in lines
                       if line.lower().startswith(b"content-length:")), 0)
        while len(pending) < length:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
        body, pending = pending[:length], pending[length:]
        method, path = lines[0].decode("latin-1").split(" ", 2)[:2]
        key = next((line.split(b":", 1)[1].strip().decode("latin-1").removeprefix("Bearer ")
                    for line in lines if line.lower().startswith(b"authorization:")), "")
        yield Call(method, path, key, body)


class RawDify:
    """`answer` is the whole raw response to the next app runs (bytes, or a list of pieces sent
    one by one); `connections` counts accepts; `calls` records every request."""

    def __init__(self) -> None:
        self.answer: bytes | list[bytes] = b""
        self.pause = 0.0  # seconds between two pieces of a list `answer`
        self.close_after = False  # close the connection after the answer, whatever its headers say
        self.stop_answer: bytes | None = None  # the raw response to stop calls (None: a JSON success)
        self.apps: dict[str, dict] = {}  # app key -> its /info (others get APP_INFO)
        self.calls: list[Call] = []
        self.connections = 0
        self._called = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(calls)` is true (each new call wakes the wait); False on timeout."""
        with self._called:
            return self._called.wait_for(lambda: predicate(self.calls), timeout)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, contextlib.suppress(ConnectionError):  # the gateway may drop a connection at any time
            for call in requests_on(conn):
                self._record(call)
                route = call.path.split("?", 1)[0]
                if route.endswith("/stop"):
                    if self.stop_answer is None:
                        conn.sendall(json_response({"result": "success"}))
                    else:
                        conn.sendall(self.stop_answer)
                        if b"Connection: close" in self.stop_answer:
                            return
                elif route.endswith("/info"):
                    conn.sendall(json_response(self.apps.get(call.key, APP_INFO)))
                elif route.endswith("/parameters"):
                    conn.sendall(json_response(PARAMETERS))
                elif not self._send_answer(conn):
                    return

    def _record(self, call: Call) -> None:
        with self._called:
            self.calls.append(call)
            self._called.notify_all()

    def _send_answer(self, conn: socket.socket) -> bool:
        """Send the answer; False when the connection is to be closed after it."""
        answer, pause = self.answer, self.pause
        pieces = [answer] if isinstance(answer, bytes) else answer
        try:
            for number, piece in enumerate(pieces):
                if isinstance(piece, threading.Event):
                    piece.wait(HOLD_LIMIT)  # held until the test sets it
                    continue
                if number and pause:
                    time.sleep(pause)  # the pieces reach the gateway as separate reads
                conn.sendall(piece)
        except OSError:
            return False  # the gateway stopped reading (an answer it no longer wanted)
        sent = b"".join(piece for piece in pieces if isinstance(piece, bytes))
        return not self.close_after and b"Connection: close" not in sent
