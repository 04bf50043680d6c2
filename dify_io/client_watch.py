"""Noticing, while Dify is silent, that the client has gone.

A WSGI stream learns of a vanished client only when a write fails, and the first write
after a close usually still succeeds: with Dify pinging every 10 s that is 10-20 s of a Dify
task running for nobody. Instead the client socket is watched for readability (a libev
watcher, no greenlet): a streaming client sends nothing more, so the socket becomes
readable only at end-of-file, or when it pipelines its next request.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import gevent


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
