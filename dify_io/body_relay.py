"""A Dify answer that is not an event stream (text-to-speech audio), relayed as it arrives.

The client is watched while Dify is silent (dify_io/client_watch.py): when it leaves, Dify's
socket is shut down, which ends the wait in `recv` at once, and the connection is dropped.
When Dify fails halfway, the client's connection is cut too, so that the client sees a
truncated body, never a complete-looking but short file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import requests

from dify_io import metrics
from dify_io.client_watch import ClientWatch

log = logging.getLogger(__name__)


def relay_body(response: requests.Response, client_socket: Any, chunk_size: int) -> Iterator[bytes]:
    """The body of `response` in pieces of at most `chunk_size` bytes; closes `response` at
    the end, or when the iterator is closed."""
    dify_socket = response.raw.connection.sock if response.raw.connection else None
    left = False

    def client_readable() -> None:  # called from the event loop: plain syscalls only
        nonlocal left
        if watch is not None and watch.client_gone() and dify_socket is not None:
            left = True
            _shut(dify_socket)

    watch = ClientWatch(client_socket, client_readable) if client_socket is not None else None
    complete = False
    try:
        yield from response.iter_content(chunk_size)
        complete = not left
    except (requests.RequestException, OSError) as exc:
        if not left:
            log.warning("Dify's answer broke off before its end: %s", exc)
            if client_socket is None:
                raise
            _shut(client_socket)  # the server's next write fails quietly and the connection ends
            complete = True  # not the client's doing
    finally:
        if not complete:  # the client left: noticed by the watch, or by a failed write
            metrics.client_disconnect()
        if watch is not None:
            watch.close()
        response.close()


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
