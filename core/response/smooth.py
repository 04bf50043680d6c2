"""Smooth output: text that Dify delivers in bursts goes out as a steady flow.

Dify (or the model behind it) often sends nothing for a few hundred milliseconds, then forty
words at once, and a chat UI jumps. `SmoothPacer` holds each burst's text and hands it out in
small pieces spread over the time until the next burst is expected, so the UI sees a steady
flow. It is never slower than Dify:

- Every push's text gets a deadline: its arrival plus the expected gap between bursts (an
  exponential moving average of recent gaps, at most `MAX_GAP`). All of it is out by then, so
  the backlog never holds more than one expected gap of text. A new burst only adds text with
  a later deadline, so the pace rises with the backlog; a deadline earlier than those before it
  (the expected gap shrank) pulls theirs in too, since order is kept.
- Any other item (end, error, tool call, replace, agent steps) is due `max_lag` after it
  arrives: the text before it is hurried out by then, then the item goes.
- Text that is not bursty (expected gap under `IMMEDIATE_GAP`, or a push of at most
  `SMALL_PUSH` characters with nothing buffered: a slow model's single token) and the first
  push of a stream (no gap known yet) go out at once, so a steady trickle and the time to first token are
  untouched. Otherwise a burst's first piece goes out as it arrives (at most one piece
  interval after the previous piece) and the rest follows in pieces at an even pace, at most
  `max_pieces_per_second` of them.

Pieces never cut what must stay whole: a run of zero-width characters (memory mode 2's
invisible conversation id), a combining mark and its base, a ZWJ emoji sequence, a surrogate
pair, a skin-tone modifier, a flag (a row of flags stays together). A cut that lands mid-word moves to a nearby space.

Keep-alive pings that arrive while text is buffered are dropped: the pacer's own pieces keep
the connection busy then (the buffer drains within `MAX_GAP`), and a ping queued behind text
would carry no information. With nothing buffered a ping passes at once.

No I/O and no clock: the caller passes `now` (seconds, monotonic), calls `due(now)` when
`now >= next_deadline()` and writes what comes back.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from core.items import PING, REASONING, TEXT, ZERO_WIDTH_DIGITS, ZERO_WIDTH_SEPARATOR, Item

PACED = frozenset((TEXT, REASONING))  # the item kinds whose text is spread; all others are due after max_lag

MIN_GAP = 0.01  # pushes closer than this belong to the same burst; also the least expected gap
MAX_GAP = 1.0  # the most text is ever held back: a long silence (a tool running) counts as this
IMMEDIATE_GAP = 0.03  # an expected gap below this is no burstiness: text goes out as it comes
SMALL_PUSH = 24  # characters: a push this small is a token or two, not a burst: it goes out at once
GAP_WEIGHT = 0.3  # weight of the newest gap in the moving average
CLOCK_SLACK = 1e-6  # a deadline this close counts as reached: float sums of intervals drift by ~1e-16
WORD_REACH = 12  # how far (characters) a cut may move to land next to a space

_ZERO_WIDTH = frozenset(ZERO_WIDTH_DIGITS + ZERO_WIDTH_SEPARATOR)
_ZWJ = "\u200d"
_MARK_CATEGORIES = frozenset(("Mn", "Mc", "Me"))  # combining, spacing and enclosing marks, variation selectors


def _glued(before: str, after: str) -> bool:
    """Whether a cut between these two characters would break something that must stay whole."""
    if after.isascii():  # the hot path: nothing glues to an ASCII character that follows
        return False
    if after in _ZERO_WIDTH:
        return before in _ZERO_WIDTH or after == _ZWJ
    if before == _ZWJ or unicodedata.combining(after) or unicodedata.category(after) in _MARK_CATEGORIES:
        return True
    if "\U0001f3fb" <= after <= "\U0001f3ff":  # emoji skin-tone modifier
        return True
    if "\U0001f1e6" <= after <= "\U0001f1ff" and "\U0001f1e6" <= before <= "\U0001f1ff":  # flags (pairs)
        return True
    return "\ud800" <= before <= "\udbff" and "\udc00" <= after <= "\udfff"


def _near_space(text: str, cut: int, floor: int) -> int:
    """`cut`, or the nearest space within WORD_REACH if `cut` is mid-word (pieces start with the
    space, like model tokens do).

    Moving back is allowed down to `floor` (what deadlines require); moving forward only
    sends text sooner, which is always allowed.
    """
    if text[cut - 1].isspace() or text[cut].isspace():
        return cut
    ahead = min(len(text), cut + WORD_REACH)
    forward = min((i for i in (text.find(" ", cut, ahead), text.find("\n", cut, ahead)) if i >= 0), default=-1)
    behind = max(floor, cut - WORD_REACH)
    back = max(text.rfind(" ", behind, cut), text.rfind("\n", behind, cut))  # the space starts the next piece
    if back >= floor and (forward < 0 or cut - back < forward - cut):
        return back
    return forward if forward >= 0 else cut


def _whole(text: str, cut: int) -> int:
    """The first position at or after `cut` where `text` may be cut."""
    while 0 < cut < len(text) and _glued(text[cut - 1], text[cut]):
        cut += 1
    return cut


def _coalesce(items: list[Item]) -> list[Item]:
    """Adjacent pieces of the same paced kind as one item: fewer, larger writes."""
    out: list[Item] = []
    for item in items:
        if out and item[0] in PACED and out[-1][0] == item[0]:
            out[-1] = (item[0], out[-1][1] + item[1])
        else:
            out.append(item)
    return out


class _Entry:
    """One buffered push's text, or one other item; `deadline` is when it must be out."""

    __slots__ = ("kind", "value", "deadline")

    def __init__(self, kind: str, value: Any, deadline: float) -> None:
        self.kind = kind
        self.value = value
        self.deadline = deadline


class SmoothPacer:
    """Spreads bursts of text over the expected gap between bursts; see the module docstring."""

    __slots__ = ("_max_lag", "_small_push", "_min_piece", "_interval", "_queue", "_offset", "_gap", "_burst_at",
                 "_next_tick", "_last_tick")

    def __init__(self, max_lag: float = 0.05, min_piece_chars: int = 1, max_pieces_per_second: float = 60.0,
                 small_push: int = SMALL_PUSH) -> None:
        if max_lag < 0 or min_piece_chars < 1 or max_pieces_per_second <= 0:
            raise ValueError("max_lag >= 0, min_piece_chars >= 1 and max_pieces_per_second > 0 are required")
        self._max_lag = max_lag
        self._small_push = small_push
        self._min_piece = min_piece_chars
        self._interval = 1.0 / max_pieces_per_second
        self._queue: list[_Entry] = []  # not a deque: an empty one takes 760 bytes, and every held stream has a pacer
        self._offset = 0  # characters of the head entry's text already sent
        self._gap: float | None = None  # expected gap between bursts; None until two bursts were seen
        self._burst_at: float | None = None  # when the latest burst began
        self._next_tick: float | None = None
        self._last_tick = -math.inf

    @property
    def expected_gap(self) -> float | None:
        """The current estimate of the time between bursts (None before the second burst)."""
        return self._gap

    def push(self, items: list[Item], now: float) -> list[Item]:
        """Take items that just arrived from Dify; return what is due now (in order)."""
        out: list[Item] = []
        hold = self._text_hold(items, now)
        queue = self._queue
        text_queued = False
        for item in items:
            kind = item[0]
            if kind in PACED:
                if not item[1]:
                    continue
                if hold == 0 and not queue:
                    out.append(item)
                    continue
                self._enqueue(_Entry(kind, item[1], now + hold))
                text_queued = True
            elif not queue:
                out.append(item)
            elif kind != PING:  # a ping behind buffered text is dropped (module docstring)
                self._enqueue(_Entry(kind, item, now + self._max_lag))
        if text_queued:  # more text may need a faster pace: do not wait longer than one piece interval
            tick = self._last_tick + self._interval
            self._next_tick = tick if self._next_tick is None else min(self._next_tick, tick)
        out += self.due(now)
        return _coalesce(out)

    def due(self, now: float) -> list[Item]:
        """The items whose time has come (call when `now >= next_deadline()`)."""
        deadline = self.next_deadline()
        if deadline is None or now < deadline - CLOCK_SLACK:
            return []
        return _coalesce(self._tick(now))

    def next_deadline(self) -> float | None:
        """When `due` should be called next; None while nothing is buffered."""
        if not self._queue:
            return None
        head = self._queue[0].deadline  # deadlines never decrease along the queue
        return head if self._next_tick is None else min(self._next_tick, head)

    def flush(self) -> list[Item]:
        """Everything still buffered, at once (the stream ended or the client left)."""
        out: list[Item] = []
        offset = self._offset
        for entry in self._queue:
            out.append((entry.kind, entry.value[offset:]) if entry.kind in PACED else entry.value)
            offset = 0
        self._queue.clear()
        self._offset = 0
        self._next_tick = None
        return _coalesce(out)

    def _text_hold(self, items: list[Item], now: float) -> float:
        """How long this push's text may be held: the expected gap, updated with this push.

        Only pushes that carry text count, and pushes within MIN_GAP of a burst's start are the
        same burst. Zero (send at once) before any gap is known and when bursts are not bursty.
        """
        if not any(kind in PACED and value for kind, value in items):
            return 0.0  # no text to hold
        if self._burst_at is None:
            self._burst_at = now
        elif now - self._burst_at >= MIN_GAP:
            sample = min(now - self._burst_at, MAX_GAP)
            self._gap = sample if self._gap is None else self._gap + GAP_WEIGHT * (sample - self._gap)
            self._burst_at = now
        if self._gap is None or self._gap < IMMEDIATE_GAP:
            return 0.0
        if not self._queue and sum(len(value) for kind, value in items if kind in PACED) <= self._small_push:
            return 0.0  # a slow model's single token: spreading it would only cut the word
        return self._gap

    def _enqueue(self, entry: _Entry) -> None:
        """Append, pulling earlier deadlines in to this one: what comes before it goes before it."""
        for earlier in reversed(self._queue):
            if earlier.deadline <= entry.deadline:
                break
            earlier.deadline = entry.deadline
        self._queue.append(entry)

    def _tick(self, now: float) -> list[Item]:
        """Send one piece: the share of the backlog that keeps every deadline at an even pace.

        `rate` is the pace that meets the tightest deadline; the piece is what that pace gives
        until the next tick, at least everything whose deadline comes before the next tick.
        """
        marks: list[tuple[int, float]] = []  # (characters through this entry, its deadline)
        total = 0
        rate = 0.0
        offset = self._offset
        for entry in self._queue:
            if entry.kind in PACED:
                total += len(entry.value) - offset
                offset = 0
            marks.append((total, entry.deadline))
            if entry.deadline > now:
                rate = max(rate, total / (entry.deadline - now))
        step = max(self._interval, self._min_piece / rate) if rate else self._interval
        need = max((chars for chars, deadline in marks if deadline <= now + step), default=0)
        target = max(need, self._min_piece, math.ceil(rate * step - 1e-9))
        out = self._take(target, need)
        self._last_tick = now
        self._next_tick = now + step if self._queue else None
        return out

    def _take(self, target: int, need: int) -> list[Item]:
        """About `target` characters from the head (at least `need`), cut where cutting is
        allowed, then the non-text items that are now at the head."""
        out: list[Item] = []
        queue = self._queue
        taken = 0
        while queue:
            entry = queue[0]
            if entry.kind not in PACED:
                out.append(entry.value)
                del queue[0]
                continue
            text, start = entry.value, self._offset
            if taken >= target:
                if not (out and out[-1][0] == entry.kind and _glued(out[-1][1][-1], text[start])):
                    break
                target = taken + 1  # the previous push ended in the middle of something whole
            cut = start + target - taken
            if cut < len(text):
                floor = start + max(need - taken, self._min_piece - taken, 1)
                cut = _whole(text, _near_space(text, cut, floor))
            if cut < len(text):
                out.append((entry.kind, text[start:cut]))
                self._offset = cut
                break
            out.append((entry.kind, text[start:]))
            taken += len(text) - start
            del queue[0]
            self._offset = 0
        return out
