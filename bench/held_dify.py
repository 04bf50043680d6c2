"""`python -m bench.held_dify --ping SECONDS`: a Dify that only holds streams, for figure 8.

The emulator looks at each of its open streams every 0.25 s (about one core for 5,000 streams
on the development machine), and notices a client that left with select(), which takes no
descriptor past 1023: it cannot hold 10,000 streams on two cores. Here every run of an app is
the same chat answer, which never ends: Dify's headers with the first words at once, then a
ping every SECONDS, until the gateway closes the connection. A held stream costs one greenlet
asleep in `recv`. Also answered, on keep-alive connections read as tests/raw_dify.py reads
them: `/info` and `/parameters` (one chat app, `demo-chat`, whatever the key), the stop
routes, and `GET /streams` (`{"active": n}`, the streams open now). Prints `listening on
<base URL>` once it accepts connections. Its limit on open files is the benchmark's, which
raised it.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402

from gevent.server import StreamServer  # noqa: E402

from tests.raw_dify import PARAMETERS, json_response, requests_on  # noqa: E402

INFO = {"name": "demo-chat", "description": "", "tags": [], "mode": "chat", "author_name": "bench"}
IDS = {"conversation_id": "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11", "message_id": "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44",
       "task_id": "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d", "created_at": 1735689600}
WORDS = ["w1 ", "w2 ", "w3 ", "w4 ", "w5 "]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


OPENING = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
    chunk(b"data: " + json.dumps({"event": "message", "answer": word, **IDS}).encode() + b"\n\n") for word in WORDS)
PING = chunk(b"event: ping\n\n")


class HeldDify:
    def __init__(self, ping_seconds: float) -> None:
        self.ping_seconds = ping_seconds
        self.active = 0

    def serve(self, conn: socket.socket, _address: object) -> None:
        """One connection: requests one after the other until a stream (or the client) ends it."""
        try:
            for call in requests_on(conn):
                route = call.path.split("?", 1)[0]
                if route.endswith("/stop"):
                    conn.sendall(json_response({"result": "success"}))
                elif route.endswith("/info"):
                    conn.sendall(json_response(INFO))
                elif route.endswith("/parameters"):
                    conn.sendall(json_response(PARAMETERS))
                elif route.endswith("/streams"):
                    conn.sendall(json_response({"active": self.active}))
                elif call.method == "POST":
                    self.hold(conn)
                    return
                else:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass  # the gateway dropped the connection
        finally:
            conn.close()

    def hold(self, conn: socket.socket) -> None:
        """The never-ending answer, until the gateway closes the connection."""
        self.active += 1
        try:
            conn.sendall(OPENING)
            conn.settimeout(self.ping_seconds)
            while True:
                try:
                    if not conn.recv(1):
                        return
                except TimeoutError:
                    conn.sendall(PING)
        finally:
            self.active -= 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.held_dify")
    parser.add_argument("--ping", type=float, default=5.0, help="seconds between two pings of a stream")
    args = parser.parse_args()
    server = StreamServer(("127.0.0.1", 0), HeldDify(args.ping).serve, backlog=4096)
    server.start()
    print(f"listening on http://127.0.0.1:{server.address[1]}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
