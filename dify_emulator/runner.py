"""Timing of a stream: delays, bursts, keep-alive pings, stops, disconnects and
the scenario's faults (error, pause, stall, close, reset).

The runner is a generator of byte chunks; gunicorn's gevent worker writes each
chunk as it is produced, and closes the generator (GeneratorExit at the pending
`yield`) when the client goes away. All waiting goes through `_wait`, which
wakes for stops, sends pings when due, and notices a vanished client by peeking
at the socket, so that even silent streams end promptly.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from gevent.monkey import get_original

from .sse import PING, split_for_wire
from .store import LiveTask
from .streams import Plan, RunContext

_OK, _STOPPED, _GONE = "ok", "stopped", "gone"
_END = "end"
#: Longest single sleep: the latency for noticing stops and vanished clients.
_STEP = 0.25
#: Pause between the small writes of `split_utf8`, so they leave as separate TCP segments.
_SPLIT_PAUSE = 0.002
# A zero-timeout readiness check never blocks, so the plain syscall is used instead of
# gevent's cooperative select, which costs several times more per call.
_poll_select = get_original("select", "select")


def abort_connection(sock: Any, settle: float = 0.0) -> None:
    """Reset the client connection (SO_LINGER 0 + close sends RST) and unwind the request.

    `settle` gives the client a moment to read what was already written, because
    unread data is discarded when the reset arrives. The raised ECONNRESET is
    the error gunicorn silently ignores for a vanished client.
    """
    if settle:
        time.sleep(settle)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass
    raise ConnectionResetError(errno.ECONNRESET, "connection reset by the Dify emulator")


def client_gone(sock: Any) -> bool:
    """True when the client closed or reset its connection (readable socket, nothing to read)."""
    try:
        readable, _, _ = _poll_select([sock.fileno()], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def wait_blocking(seconds: float, sock: Any) -> bool:
    """Sleep up to `seconds` (may be infinite) for a blocking call; False if the client left."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        if sock is not None and client_gone(sock):
            return False
        time.sleep(min(remaining, _STEP))


class StreamRunner:
    """Drives one SSE stream from a plan; `finish` is called exactly once at the end."""

    def __init__(
        self,
        ctx: RunContext,
        plan: Plan,
        task: LiveTask,
        sock: Any,
        on_start: Callable[[], None],
        on_finish: Callable[[StreamRunner], None],
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.task = task
        self.sock = sock
        self.scenario = ctx.scenario
        interval = self.scenario.ping_interval_s
        self.ping_interval = ctx.app.ping_interval_s if interval is None else interval
        self.next_ping = ctx.started + self.ping_interval
        self.sent: list[str] = []
        self.status = "normal"
        self.error: str | None = None
        self._on_start = on_start
        self._on_finish = on_finish
        self._finished = False
        self.started = False

    def iterate(self) -> Iterator[bytes]:
        self.started = True
        self._on_start()
        try:
            yield from self._run()
        finally:
            self.finish()

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_finish(self)

    # -- the stream --------------------------------------------------------------------

    def _run(self) -> Iterator[bytes]:
        scenario = self.scenario
        if scenario.reset_before_headers:
            abort_connection(self.sock)
        for raw in scenario.raw_before:
            yield raw.encode()
        if self.plan.immediate_ping:
            yield PING
        if scenario.pre_run_failure is not None:
            # Only chatflow and workflow streams get here (generation.py answers the rest with an HTTP 400).
            self.status, self.error = "failed", scenario.pre_run_failure
            for event in self.plan.pre_run_failure():
                yield from self._send(event)
            return
        if scenario.first_delay_ms:
            outcome = yield from self._wait(scenario.first_delay_ms / 1000)
            if outcome != _OK:
                yield from self._end(outcome)
                return
        for event in self.plan.opening():
            yield from self._send(event)
        if self.task.stop_requested:
            yield from self._end(_STOPPED)
            return
        outcome = yield from self._text()
        if outcome == _END:
            return
        if outcome == _OK and scenario.never_end:
            outcome = yield from self._wait(math.inf)
        if outcome != _OK:
            yield from self._end(outcome)
            return
        for event in self.plan.closing(self.sent):
            yield from self._send(event)
        if self.plan.pauses:
            self.status = "paused"
            if (scenario.pause_for_input or {}).get("keep_open"):
                yield from self._wait(math.inf)  # pings only, until a stop or the client leaves
            return
        self.status = self.scenario.workflow_status or "normal"

    def _text(self) -> Iterator[bytes]:
        """Send the answer deltas; returns _OK, _STOPPED, _GONE, or _END when a fault ended the stream."""
        deltas = self.ctx.deltas
        count = len(deltas)
        hooks = self._hooks(count)
        burst = self.scenario.burst
        delay = self.scenario.delay_ms / 1000
        if 0 in hooks:
            outcome = yield from self._fault(hooks[0])
            if outcome != _OK:
                return outcome
        group: list[bytes] = []
        for index, delta in enumerate(deltas, 1):
            if self.task.stop_requested:
                if group:
                    yield from self._send(b"".join(group))
                return _STOPPED
            group.append(self.plan.text(delta))
            self.sent.append(delta)
            faults = hooks.get(index)
            if len(group) < burst and faults is None and index < count:
                continue
            if self.ctx.first_text_at is None:
                self.ctx.first_text_at = time.monotonic()
            yield from self._send(b"".join(group))
            group = []
            if faults is not None:
                outcome = yield from self._fault(faults)
                if outcome != _OK:
                    return outcome
            if delay and index < count:
                outcome = yield from self._wait(delay)
                if outcome != _OK:
                    return outcome
        return _STOPPED if self.task.stop_requested else _OK

    def _hooks(self, count: int) -> dict[int, list[str]]:
        """Faults by the number of text events after which they happen (clamped to the answer length)."""
        hooks: dict[int, list[str]] = {}
        scenario = self.scenario
        for name, after in (
            ("stall", scenario.stall_after),
            ("pause", scenario.pause_after),
            ("error", scenario.error_after),
            ("close", scenario.close_after),
            ("reset", scenario.reset_after),
        ):
            if after is not None:
                hooks.setdefault(min(max(after, 0), count), []).append(name)
        return hooks

    def _fault(self, names: list[str]) -> Iterator[bytes]:
        scenario = self.scenario
        for name in names:
            if name == "stall":
                stall = math.inf if scenario.stall_s is None else scenario.stall_s
                outcome = yield from self._wait(stall, pings=False, honor_stop=False)
                if outcome != _OK:
                    return outcome
            elif name == "pause":
                outcome = yield from self._wait(scenario.pause_s)
                if outcome != _OK:
                    return outcome
            elif name == "error":
                self.status, self.error = "error", scenario.error_message
                yield self.plan.error(scenario.error_code, scenario.error_status, scenario.error_message)
                return _END
            elif name == "close":
                self.status = "closed"
                return _END
            else:
                self.status = "reset"
                abort_connection(self.sock, settle=0.05)
        return _OK

    def _end(self, outcome: str) -> Iterator[bytes]:
        """End after a stop request (Dify's stopped terminal events) or a vanished client."""
        if outcome == _STOPPED:
            self.status = "stopped"
            for event in self.plan.stopped(self.sent):
                yield from self._send(event)
        else:
            self.status = "disconnected"

    # -- writing and waiting -----------------------------------------------------------

    def _send(self, data: bytes) -> Iterator[bytes]:
        if self.ping_interval and time.monotonic() >= self.next_ping:
            self._advance_ping()
            yield PING
        if not self.scenario.split_utf8:
            yield data
            return
        pieces = split_for_wire(data)
        for number, piece in enumerate(pieces):
            if number:
                time.sleep(_SPLIT_PAUSE)
            yield piece

    def _advance_ping(self) -> None:
        """Pings are due at started + k * interval; several missed intervals give one ping."""
        elapsed = time.monotonic() - self.ctx.started
        self.next_ping = self.ctx.started + (math.floor(elapsed / self.ping_interval) + 1) * self.ping_interval

    def _wait(self, seconds: float, *, pings: bool = True, honor_stop: bool = True) -> Iterator[bytes]:
        """Sleep `seconds`, sending due pings; returns _OK, _STOPPED or _GONE.

        Sleeps are cut into steps of at most _STEP so that stops and vanished
        clients are noticed quickly; a plain sleep per step is several times
        cheaper under gevent than waiting on an event with a timeout.
        """
        deadline = time.monotonic() + seconds
        watch = self.sock is not None and seconds >= _STEP
        task = self.task
        while True:
            now = time.monotonic()
            if pings and self.ping_interval and now >= self.next_ping:
                self._advance_ping()
                yield PING
                continue
            if honor_stop and task.stop_requested:
                return _STOPPED
            if now >= deadline:
                return _OK
            if watch and client_gone(self.sock):
                return _GONE
            step = min(deadline - now, _STEP)
            if pings and self.ping_interval:
                step = min(step, self.next_ping - now)
            time.sleep(step)
