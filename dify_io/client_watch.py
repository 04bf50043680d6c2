"""Noticing, while Dify is silent, that the client has gone; and a client that stopped reading.

A WSGI stream learns of a vanished client only when a write fails, and the first write
after a close usually still succeeds: with Dify pinging every 10 s that is 10-20 s of a Dify
task running for nobody. Instead the client socket is watched for readability (a libev
watcher, no greenlet): a streaming client sends nothing more, so the socket becomes
readable only at end-of-file, or when it pipelines its next request.

A client that is still connected but reads nothing (its TCP window stays shut) would hold its
stream, admission slot, Dify connection and Dify task for ever: gunicorn's gevent worker writes
to a blocking socket, and the write waits as long as the client does. `WriteLimit` bounds each
write instead (see there).
"""

from __future__ import annotations

import _socket
import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent

log = logging.getLogger(__name__)


class ClientWatch:
    __slots__ = ("_socket", "_on_readable", "fired", "_watcher")

    def __init__(self, client_socket: Any, on_readable: Callable[[], None]) -> None:
        self._socket = client_socket
        self._on_readable = on_readable
        self.fired = False
        self._watcher = gevent.get_hub().loop.io(client_socket.fileno(), 1)
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        # One shot: the watcher is level-triggered and runs in the hub, which must not block.
        self._watcher.stop()
        self.fired = True
        self._on_readable()

    def client_gone(self) -> bool:
        """After the watcher fired: True at end-of-file (the client closed or reset)."""
        try:
            data = self._socket.recv(1, socket.MSG_PEEK)  # readable, so this does not wait
        except OSError:
            return True
        self.fired = False
        return not data  # data: a pipelined request, which the server will read later

    def close(self) -> None:
        self._watcher.stop()
        self._watcher.close()


class WriteLimit:
    """Bounds each write of a streamed body to the client to `seconds` (TIMEOUT).

    The rendering arms it when a write is due and disarms it when the server asks for the next
    piece, so it runs only while a write is in progress (never while the stream waits for Dify):
    a bare libev timer per write, and nothing pending while a stream is held. When it expires the
    client's socket is shut down (not closed: the server still owns it), so the stuck write fails
    at once with EPIPE, which gunicorn takes for a vanished client; the body is then closed as
    for one (the Dify task is stopped, the admission slot freed). No socket timeout is set, so
    the connection's next request (keep-alive) meets the socket as gunicorn left it.
    """

    __slots__ = ("_socket", "_seconds", "_timer")

    def __init__(self, client_socket: Any, seconds: float) -> None:
        self._socket = client_socket
        self._seconds = seconds
        self._timer: Any = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = gevent.get_hub().loop.timer(self._seconds)
            self._timer.start(self._expired)

    def disarm(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()

    def _expired(self) -> None:  # in the event loop: plain system calls only
        self.disarm()
        try:
            # A plain socket object on the same descriptor: gevent's own `shutdown` would cancel
            # the writer's wait with EBADF, which gunicorn logs as a socket error with a traceback.
            stuck = _socket.socket(fileno=self._socket.fileno())
        except (OSError, ValueError):
            return  # closed already
        try:
            stuck.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            stuck.detach()
        log.info("the client read nothing for %g s: its answer ends as if it had left", self._seconds)
