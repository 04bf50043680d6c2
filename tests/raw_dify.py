"""A fake Dify that writes its HTTP responses byte by byte as a test sets them.

The emulator runs on gunicorn, which always frames a streamed body with chunked encoding.
Behind a proxy Dify's answer may come with a Content-Length, or end when the connection
closes, and a broken proxy may send bad framing: this server sends whatever raw bytes the
test chose for `POST /chat-messages`, and answers `/info` and `/parameters` for one chat app.
"""

from __future__ import annotations

import json
import socket
import threading

APP_INFO = {"name": "raw-chat", "description": "", "tags": [], "mode": "chat", "author_name": "test"}
PARAMETERS = {"opening_statement": "", "user_input_form": [], "file_upload": {}, "system_parameters": {}}


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


class RawDify:
    """`answer` is the whole raw response to the next chat calls; `connections` counts accepts."""

    def __init__(self) -> None:
        self.answer = b""
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(pending) < length:
                    pending += conn.recv(65536)
                pending = pending[length:]
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/stop"):
                    conn.sendall(json_response({"result": "success"}))
                elif path.endswith(b"/info"):
                    conn.sendall(json_response(APP_INFO))
                elif path.endswith(b"/parameters"):
                    conn.sendall(json_response(PARAMETERS))
                else:
                    conn.sendall(self.answer)
                    if b"Connection: close" in self.answer:
                        return
