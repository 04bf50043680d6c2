"""The one place that reaches into urllib3's internals.

A streamed Dify answer is read straight from its connection's socket (dify_io/upstream.py
says why). requests' response wraps urllib3's, which wraps http.client's; what the reader relies on
there is not public:

- http.client's response (`urllib3.HTTPResponse._fp`): how the body is framed (`chunked`,
  `length`, `will_close`) and the bytes it already read past the headers (`fp`);
- the connection (`HTTPResponse.connection`, public) and its pool (`HTTPResponse._pool`);
- giving the connection back to that pool (`HTTPConnectionPool._put_conn`), as urllib3's own
  `release_conn` does;
- http.client's connection keeps its last response (`HTTPConnection.__response`) until the next
  request, which a held stream's connection may wait for as long as the stream lasts;
- urllib3's response closes http.client's response and the connection when it is garbage
  collected while still open (`io.IOBase`'s finalizer calls its `close`): `detach` takes both
  from it (`HTTPResponse._fp`, `HTTPResponse._connection`), so that the reader, not a finalizer,
  decides when they close. This matters when Dify will close the connection: the body is then
  read through http.client's response after requests' and urllib3's objects were let go.

`requirements.txt` keeps urllib3 below its next major release, and
tests/test_urllib3_internals.py checks these names against the installed urllib3 over a real
connection, so an upgrade that changes them fails there, by name, not in every chat test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import requests


class DetachedBody(NamedTuple):
    message: Any  # http.client.HTTPResponse, its headers already parsed
    connection: Any  # urllib3's HTTPConnection; `.sock` is the socket
    put_back: Callable[[Any], None]  # gives a connection back to its pool (closed ones are replaced)


def detach(response: requests.Response) -> DetachedBody:
    """What reading `response`'s body from the socket needs, taken from it: requests' and
    urllib3's response objects may be dropped afterwards (closing them closes nothing)."""
    raw = response.raw
    try:
        detached = DetachedBody(raw._fp, raw.connection, raw._pool._put_conn)
    except AttributeError as exc:
        raise RuntimeError(f"this urllib3 release changed what dify_io/connection.py relies on: {exc}") from None
    # Without its body and connection urllib3's response counts as closed: its finalizer leaves
    # alone what the reader still reads.
    raw._fp = None
    raw._connection = None
    return detached


def forget_response(connection: Any) -> None:
    """Let the connection drop its closed response (and the headers parsed into it) now, as
    http.client itself does at the connection's next request."""
    connection._HTTPConnection__response = None
