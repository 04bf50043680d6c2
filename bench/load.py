"""The gevent load client: batches of requests, single timed streams, and held streams.

Every function takes a `Target` and the request bytes it built, so the same pattern runs
against the emulator directly and through the gateway. Failures are counted, never
raised: a benchmark reports errors as a figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from bench.http import Connection, Response
from bench.sse import EventCounter
from bench.targets import Target

# Seconds a single socket operation may block before the request counts as failed.
SOCKET_TIMEOUT = 30.0


@dataclass
class Batch:
    """Outcome of many requests: wall time, failures, and one value per successful request."""

    seconds: float = 0.0
    errors: int = 0
    values: list[Any] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(reason)


@dataclass
class StreamResult:
    ttfb: float  # seconds from sending the request to the first complete content event
    events: int  # content events received
    seconds: float  # sending the request -> end of the body


class BadResponse(Exception):
    pass


def read_body(expect: bytes) -> Callable[[Response, float], int]:
    """A reader for one-shot calls: the body must contain `expect`; the value is its size."""

    def read(response: Response, _sent_at: float) -> int:
        body = response.read()
        if expect not in body:
            raise BadResponse(f"the body lacks {expect!r}: {body[:120]!r}")
        return len(body)

    return read


def read_stream(marker: bytes) -> Callable[[Response, float], StreamResult]:
    """A reader for streams: counts content events and times the first one."""

    def read(response: Response, sent_at: float) -> StreamResult:
        counter = EventCounter(marker)
        for chunk in response.chunks():
            counter.feed(chunk)
        if counter.first_at is None:
            raise BadResponse("the stream ended without a content event")
        return StreamResult(counter.first_at - sent_at, counter.count, time.perf_counter() - sent_at)

    return read


@dataclass
class Timeline:
    """When a stream's content arrived: one time per client write that carried content."""

    writes: list[float]  # seconds from sending the request to each write that completed a content event
    seconds: float  # sending the request -> end of the body ([DONE] and the last chunk)

    def largest_gap(self, after: float) -> float:
        """The longest wait between consecutive content writes, among those that arrived
        `after` seconds or more after the first one (NaN when fewer than two did)."""
        later = [at for at in self.writes if at >= self.writes[0] + after]
        return max((b - a for a, b in zip(later, later[1:], strict=False)), default=math.nan)


def read_timeline(marker: bytes) -> Callable[[Response, float], Timeline]:
    """A reader for streams that records when each content-carrying write arrived.

    The gateway sends one HTTP chunk per write, so chunks are its writes (several that arrive
    in one network read still count one by one)."""

    def read(response: Response, sent_at: float) -> Timeline:
        counter = EventCounter(marker)
        writes = []
        for chunk in response.chunks():
            before = counter.count
            counter.feed(chunk)
            if counter.count > before:
                writes.append(time.perf_counter() - sent_at)
        if not writes:
            raise BadResponse("the stream ended without a content event")
        return Timeline(writes, time.perf_counter() - sent_at)

    return read


class Client:
    """One keep-alive connection that reconnects when the server closed it or a call failed."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.conn: Connection | None = None

    def call(self, raw: bytes, read: Callable[[Response, float], Any]) -> Any:
        if self.conn is None or not self.conn.reusable:
            self.close()
            self.conn = Connection(self.target.host, self.target.port, SOCKET_TIMEOUT)
        try:
            sent_at = time.perf_counter()
            response = self.conn.request(raw)
            if response.status != 200:
                raise BadResponse(f"HTTP {response.status}: {response.read()[:160]!r}")
            return read(response, sent_at)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run_batch(target: Target, raw: bytes, count: int, concurrency: int,
              read: Callable[[Response, float], Any]) -> Batch:
    """`count` identical requests from `concurrency` keep-alive connections."""
    batch = Batch()
    remaining = [count]

    def worker() -> None:
        client = Client(target)
        try:
            while remaining[0] > 0:
                remaining[0] -= 1
                _record(batch, client, raw, read)
        finally:
            client.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(min(concurrency, count))])
    batch.seconds = time.perf_counter() - started
    return batch


def _record(batch: Batch, client: Client, raw: bytes, read: Callable[[Response, float], Any]) -> None:
    """One request; its result, or its failure, goes into `batch`."""
    try:
        batch.values.append(client.call(raw, read))
    except Exception as exc:
        batch.fail(f"{type(exc).__name__}: {exc}")


def staggered(target: Target, raw: bytes, count: int, spacing: float,
              read: Callable[[Response, float], Any]) -> Batch:
    """`count` concurrent requests, one connection each, started `spacing` seconds apart, so
    that streams with pauses do not all get their events at the same moment."""
    batch = Batch()

    def one() -> None:
        client = Client(target)
        try:
            _record(batch, client, raw, read)
        finally:
            client.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn_later(index * spacing, one) for index in range(count)])
    batch.seconds = time.perf_counter() - started
    return batch


def alternate(targets: list[Target], raws: list[bytes], count: int,
              read_for: Callable[[Target], Callable[[Response, float], Any]]) -> list[Batch]:
    """`count` sequential rounds, each calling every target once in turn (one connection each).

    Interleaving puts both sides under the same conditions at every moment, so drift in
    the machine's load cannot favour one of them.
    """
    clients = [Client(target) for target in targets]
    batches = [Batch() for _ in targets]
    readers = [read_for(target) for target in targets]
    started = time.perf_counter()
    try:
        for _ in range(count):
            for client, raw, read, batch in zip(clients, raws, readers, batches, strict=True):
                try:
                    batch.values.append(client.call(raw, read))
                except Exception as exc:
                    batch.fail(f"{type(exc).__name__}: {exc}")
    finally:
        for client in clients:
            client.close()
    for batch in batches:
        batch.seconds = time.perf_counter() - started
    return batches


class HeldStreams:
    """Many concurrent streams that stay open, reading, until `close()`.

    A stream counts as held once its first content event arrived. It fails if it cannot
    connect, gets a status other than 200, or ends before the benchmark closes it.
    """

    def __init__(self, target: Target, raw: bytes, count: int) -> None:
        self.target = target
        self.raw = raw
        self.count = count
        self.batch = Batch()
        self.held = 0
        self.chunks = 0  # body pieces received, held streams included: they are being read
        self.first_events: list[float] = []  # per held stream: seconds from connecting to its first content event
        self._settled = 0
        self._all_settled = Event()
        self._greenlets: list[gevent.Greenlet] = []

    def open(self, timeout: float, per_second: float | None = None) -> float:
        """Start every stream, all at once or `per_second` of them a second; wait until each is
        held or failed. Returns the seconds it took."""
        started = time.perf_counter()
        if per_second is None:
            self._greenlets = [gevent.spawn(self._hold) for _ in range(self.count)]
        else:
            self._greenlets = [gevent.spawn_later(index / per_second, self._hold) for index in range(self.count)]
        self._all_settled.wait(timeout)
        return time.perf_counter() - started

    def _settle(self) -> None:
        self._settled += 1
        if self._settled == self.count:
            self._all_settled.set()

    def _hold(self) -> None:
        conn = None
        settled = False
        started = time.perf_counter()
        try:
            conn = Connection(self.target.host, self.target.port, timeout=None)
            response = conn.request(self.raw)
            if response.status != 200:
                raise BadResponse(f"HTTP {response.status}")
            counter = EventCounter(self.target.content_marker)
            for chunk in response.chunks():
                counter.feed(chunk)
                self.chunks += 1
                if counter.count and not settled:
                    settled = True
                    self.first_events.append(counter.first_at - started)
                    self.held += 1
                    self._settle()
            raise BadResponse("the stream ended while it was held")
        except gevent.GreenletExit:
            pass  # close(): the benchmark is done with this stream
        except Exception as exc:
            self.batch.fail(f"{type(exc).__name__}: {exc}")
            if not settled:
                self._settle()
        finally:
            if conn is not None:
                conn.close()

    @property
    def errors(self) -> int:
        """Failed streams, plus those neither held nor failed when `open()` gave up waiting."""
        return self.batch.errors + (self.count - self._settled)

    def close(self) -> None:
        """Close every stream (the client side leaves, as a user closing a tab)."""
        gevent.killall(self._greenlets, block=True, timeout=30)
