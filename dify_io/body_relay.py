"""A Dify answer that is not an event stream (text-to-speech audio), relayed as it arrives.

The first piece is read before the response is committed: when Dify sent its headers but
fails before any audio, the client gets an HTTP error with a JSON body (502, or 504 when Dify
went silent), not a cut connection that SDKs would retry. Each write to the client is bounded
by TIMEOUT (dify_io/client_watch.py `WriteLimit`): a client that reads nothing ends the relay as
one that left. The client is watched while Dify is
silent (dify_io/client_watch.py): when it leaves, Dify's socket is shut down, which ends the
wait in `recv` at once, and the connection is dropped. When Dify fails halfway, the client's
connection is cut too, so that the client sees a truncated body, never a complete-looking but
short file.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Generator, Iterator
from typing import Any

import requests
from urllib3.exceptions import ReadTimeoutError

from core.errors import upstream_failure, upstream_timeout
from dify_io import metrics
from dify_io.client_watch import ClientWatch, WriteLimit

log = logging.getLogger(__name__)


def relay_body(response: requests.Response, client_socket: Any, chunk_size: int,
               write_seconds: float) -> Iterator[bytes]:
    """The body of `response` in pieces of at most `chunk_size` bytes; closes `response` at
    the end, or when the iterator is closed. Its first piece is read here: a failure before
    any audio is raised as an OpenAIError. Each write of a piece may take `write_seconds`."""
    body = _relay(response, client_socket, chunk_size)
    try:
        first = next(body)
    except StopIteration:
        return iter(())  # an empty body, or the client left
    return _after(first, body, WriteLimit(client_socket, write_seconds) if client_socket is not None else None)


def _after(first: bytes, body: Generator[bytes, None, None], writes: WriteLimit | None) -> Iterator[bytes]:
    """The pieces, with `writes` armed while the server writes each one (from the yield until
    the server asks for the next piece), never while Dify is read."""
    try:
        piece = first
        while True:
            if writes is not None:
                writes.arm()
            yield piece
            if writes is not None:
                writes.disarm()
            piece = next(body)
    except StopIteration:
        return
    finally:
        if writes is not None:
            writes.disarm()
        body.close()


def _relay(response: requests.Response, client_socket: Any, chunk_size: int) -> Generator[bytes, None, None]:
    dify_socket = response.raw.connection.sock if response.raw.connection else None
    left = False

    def client_readable() -> None:  # called from the event loop: plain syscalls only
        nonlocal left
        if watch is not None and watch.client_gone() and dify_socket is not None:
            left = True
            _shut(dify_socket)

    watch = ClientWatch(client_socket, client_readable) if client_socket is not None else None
    complete = False
    started = False  # a piece went out: the response is committed
    try:
        for piece in response.iter_content(chunk_size):
            started = True
            yield piece
        complete = not left
    except (requests.RequestException, OSError) as exc:
        if not left:
            log.warning("Dify's answer broke off before its end: %s", exc)
            if not started:
                complete = True  # not the client's doing
                raise _failure(exc) from None
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


def _failure(exc: BaseException) -> Exception:
    """The error for a speech that failed before its first byte (requests wraps urllib3's
    read timeout in a ConnectionError)."""
    if any(isinstance(error, ReadTimeoutError | TimeoutError) for error in (exc, *exc.args, exc.__context__)):
        return upstream_timeout("POST /text-to-audio sent no audio")
    return upstream_failure("Dify's speech (POST /text-to-audio) broke off before any audio", 502,
                            "upstream_disconnected")


def _shut(sock: Any) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
