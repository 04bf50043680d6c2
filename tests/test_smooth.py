"""SmoothPacer against a fake clock: pacing, order, deadlines and what must never be cut."""

from __future__ import annotations

import re
import unicodedata
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.items import ZERO_WIDTH_DIGITS as ZERO_WIDTH
from core.items import Item
from core.response.smooth import GAP_WEIGHT, MAX_GAP, MIN_GAP, PACED, SmoothPacer

EPS = 1e-9


def simulate(pacer: SmoothPacer, arrivals: list[tuple[float, list[Item]]]) -> tuple[list[tuple[float, Item]], list]:
    """Push each arrival at its time and call `due` at every deadline in between, as the relay
    would. Returns the emitted (time, item) and, per arrival, the pacer's expected gap after it."""
    emitted: list[tuple[float, Item]] = []
    gaps = []
    index = 0
    for _ in range(100_000):
        deadline = pacer.next_deadline()
        if index < len(arrivals) and (deadline is None or arrivals[index][0] <= deadline):
            now, items = arrivals[index]
            index += 1
            emitted += [(now, item) for item in pacer.push(items, now)]
            gaps.append(pacer.expected_gap)
        elif deadline is not None:
            emitted += [(deadline, item) for item in pacer.due(deadline)]
        else:
            return emitted, gaps
    raise AssertionError("the pacer made no progress")


def units(timed: list[tuple[float, Item]]) -> list[tuple[float, str, Any]]:
    """One unit per character of paced text, one per other item (pings left out)."""
    out = []
    for when, (kind, value) in timed:
        if kind in PACED:
            out += [(when, kind, char) for char in value]
        elif kind != "ping":
            out.append((when, kind, value))
    return out


def cuts(items: list[Item]) -> set[int]:
    """Positions in the paced-text stream where one item's text ends."""
    positions, count = set(), 0
    for kind, value in items:
        if kind in PACED:
            count += len(value)
            positions.add(count)
    return positions


def must_stay_whole(before: str, after: str) -> bool:
    return (before in ZERO_WIDTH and after in ZERO_WIDTH) or unicodedata.combining(after) != 0


def dify_gaps(arrivals: list[tuple[float, list[Item]]]) -> list[float | None]:
    """The expected gap between Dify's bursts after each arrival, worked out from the arrival
    times alone as the module docstring defines it: pushes with text that come at least MIN_GAP
    after the latest burst's start begin a burst; the gap is a moving average of the time between
    burst starts (each at most MAX_GAP); None until two bursts were seen. The pacer's guarantees
    are checked against this, not against the pacer's own estimate."""
    gaps: list[float | None] = []
    gap: float | None = None
    burst_at: float | None = None
    for now, items in arrivals:
        if any(kind in PACED and value for kind, value in items):
            if burst_at is None:
                burst_at = now
            elif now - burst_at >= MIN_GAP:
                sample = min(now - burst_at, MAX_GAP)
                gap = sample if gap is None else gap + GAP_WEIGHT * (sample - gap)
                burst_at = now
        gaps.append(gap)
    return gaps


def check_guarantees(pacer: SmoothPacer, arrivals: list[tuple[float, list[Item]]], max_lag: float) -> list:
    emitted, estimates = simulate(pacer, arrivals)
    gaps = dify_gaps(arrivals)
    for estimate, gap in zip(estimates, gaps, strict=True):  # the pacer estimates Dify's pace as documented
        assert (estimate is None and gap is None) or abs(estimate - gap) < EPS, (estimates, gaps)
    sent = [(when, item) for when, items in arrivals for item in items if item[0] not in PACED or item[1]]
    arrived = units(sent)
    latest = []  # per arrived unit: when it must be out at the latest
    for (when, items), gap in zip(arrivals, gaps, strict=True):
        for _, kind, _ in units([(when, item) for item in items if item[0] not in PACED or item[1]]):
            latest.append(when + (gap or 0.0) if kind in PACED else when + max_lag)
    got = units(emitted)
    assert [unit[1:] for unit in got] == [unit[1:] for unit in arrived]  # everything, in order, nothing else
    for (out_time, kind, _), (in_time, _, _), due in zip(got, arrived, latest, strict=True):
        assert out_time >= in_time - EPS  # never before it arrived
        # (1) text: never slower than Dify, out within Dify's expected gap and never held over MAX_GAP;
        # (2) other items at most max_lag late
        assert out_time <= due + EPS, (kind, in_time, out_time, due)
        if kind in PACED:
            assert out_time <= in_time + MAX_GAP + EPS
    for when, item in emitted:
        if item[0] == "ping":
            assert any(item is pushed for pushed_at, pushed in sent if pushed_at == when)
    text = "".join(unit[2] for unit in arrived if unit[1] in PACED)
    allowed = cuts([item for _, item in sent])  # a cut Dify made between its events may stay
    for position in cuts([item for _, item in emitted]) - allowed:  # (3) nothing whole is cut
        assert 0 < position < len(text)
        assert not must_stay_whole(text[position - 1], text[position]), (position, text)
    return emitted


def words(count: int, start: int = 0) -> str:
    return "".join(f" word{number}" for number in range(start, start + count))


def test_burst_is_spread_over_the_gap() -> None:
    pacer = SmoothPacer()
    bursts = [(0.3 * number, [("text", words(40, 40 * number))]) for number in range(6)]
    emitted = check_guarantees(pacer, bursts, 0.05)
    assert abs(pacer.expected_gap - 0.3) < EPS
    for number in range(2, 6):
        start = bursts[number][0]
        times = [when for when, item in emitted if int(re.findall(r"word(\d+)", item[1])[-1]) // 40 == number]
        assert times[0] == start  # the first piece goes at once: no later first token
        assert len(times) >= 10  # many pieces ...
        assert start + 0.2 <= times[-1] <= start + 0.3 + EPS  # ... over roughly the gap
        assert all(later - earlier >= 1 / 60 - EPS for earlier, later in pairwise(times))
    pieces = [item[1] for _, item in emitted]
    assert "".join(pieces) == words(240)
    mid_word = [piece for piece in pieces[1:] if not piece.startswith(" ")]
    assert len(mid_word) <= len(pieces) // 10  # cuts land before a space


def test_first_push_goes_at_once() -> None:
    pacer = SmoothPacer()
    assert pacer.push([("text", words(40))], 5.0) == [("text", words(40))]
    assert pacer.next_deadline() is None


def test_steady_trickle_passes_without_delay() -> None:
    pacer = SmoothPacer()
    for number in range(100):
        now = 0.02 * number
        assert pacer.push([("text", f" tok{number}")], now) == [("text", f" tok{number}")]
        assert pacer.next_deadline() is None


def test_text_items_of_one_push_come_out_as_one_piece() -> None:
    pacer = SmoothPacer()
    assert pacer.push([("text", "a"), ("text", "b"), ("reasoning", "c")], 0.0) == [("text", "ab"), ("reasoning", "c")]


def test_end_comes_within_max_lag_after_all_text() -> None:
    pacer = SmoothPacer(max_lag=0.05)
    end = ("end", ("stop", None))
    arrivals = [(0.0, [("text", "x")]), (0.3, [("text", "y")]), (0.6, [("text", words(60))]), (0.61, [end])]
    emitted = check_guarantees(pacer, arrivals, 0.05)
    assert emitted[-1][1] == end and emitted[-1][0] <= 0.61 + 0.05 + EPS
    assert "".join(item[1] for _, item in emitted[:-1]) == "xy" + words(60)
    assert len([when for when, _ in emitted if when > 0.6]) >= 2  # the rest is hurried, not dumped


def test_tool_call_and_error_wait_at_most_max_lag() -> None:
    for kind in ("tool_call", "error", "replace", "agent_tool_call"):
        pacer = SmoothPacer(max_lag=0.02)
        item = (kind, object())
        arrivals = [(0.0, [("text", "a")]), (0.5, [("text", "b")]), (1.0, [("text", words(50)), item]),
                    (1.1, [("text", " after")])]
        emitted = check_guarantees(pacer, arrivals, 0.02)
        position = [value for _, value in emitted].index(item)
        assert emitted[position][0] <= 1.02 + EPS
        assert "".join(value[1] for _, value in emitted[:position]) == "ab" + words(50)


def test_zero_lag_releases_at_once() -> None:
    pacer = SmoothPacer(max_lag=0.0)
    pacer.push([("text", "a")], 0.0)
    pacer.push([("text", "b")], 0.5)
    assert pacer.push([("text", words(30)), ("end", ("stop", None))], 1.0) == [
        ("text", words(30)), ("end", ("stop", None))]


def test_ping_dropped_only_while_text_is_buffered() -> None:
    pacer = SmoothPacer()
    assert pacer.push([("ping", None)], 0.0) == [("ping", None)]
    pacer.push([("text", "a")], 0.1)
    pacer.push([("text", "b")], 0.5)
    pieces = pacer.push([("text", words(40))], 0.9)
    assert pacer.next_deadline() is not None
    assert pacer.push([("ping", None)], 0.91) == []
    assert all(item[0] != "ping" for item in pacer.flush())
    assert pacer.push([("ping", None)], 1.5) == [("ping", None)]
    assert pieces


def test_flush_returns_everything_in_order() -> None:
    pacer = SmoothPacer()
    pacer.push([("text", "a")], 0.0)
    pacer.push([("reasoning", "b")], 0.5)
    first = pacer.push([("reasoning", words(20)), ("agent_tool_call", {"id": 1}), ("text", words(20))], 1.0)
    rest = pacer.flush()
    assert first and rest
    assert rest[-1] == ("text", words(20))
    assert pacer.next_deadline() is None and pacer.flush() == []
    together = "".join(value for kind, value in first + rest if kind == "reasoning")
    assert together == words(20)


def test_long_silence_counts_as_max_gap() -> None:
    pacer = SmoothPacer()
    check_guarantees(pacer, [(0.0, [("text", "a")]), (10.0, [("text", words(100))])], 0.05)
    assert pacer.expected_gap == MAX_GAP


def test_zero_width_run_is_never_split() -> None:
    run = ZERO_WIDTH * 6
    text = "".join(f"{word}{run}" for word in ("abc", "de", "f" * 30, "g")) + "tail"
    for min_piece in (1, 3):
        pacer = SmoothPacer(min_piece_chars=min_piece, max_pieces_per_second=1000)
        emitted = check_guarantees(pacer, [(0.0, [("text", "a")]), (0.5, [("text", "b")]), (1.0, [("text", text)])],
                                   0.05)
        pieces = [item[1] for when, item in emitted if when >= 1.0]
        assert len(pieces) > 5
        assert "".join(pieces) == text
        for piece in pieces:
            assert piece.count(ZERO_WIDTH[0]) in (0, piece.count(run[0]))
            assert not (piece[0] in ZERO_WIDTH and piece[-1] in ZERO_WIDTH and run not in piece)


def test_combining_marks_stay_with_their_base() -> None:
    text = "e\u0301\u0308" * 50 + "\U0001f44d\U0001f3fd" * 10 + "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 5
    pacer = SmoothPacer(max_pieces_per_second=1000)
    emitted = check_guarantees(pacer, [(0.0, [("text", "a")]), (0.5, [("text", "b")]), (1.0, [("text", text)])], 0.05)
    pieces = [item[1] for when, item in emitted if when >= 1.0]
    assert len(pieces) > 10
    for piece in pieces:
        assert unicodedata.combining(piece[0]) == 0
        assert not "\U0001f3fb" <= piece[0] <= "\U0001f3ff"
        assert "\u200d" not in (piece[0], piece[-1])


def test_text_split_by_dify_mid_grapheme_is_rejoined_when_both_parts_are_buffered() -> None:
    pacer = SmoothPacer(max_pieces_per_second=10, small_push=0)
    pacer.push([("text", "a")], 0.0)
    pacer.push([("text", "b")], 0.5)
    assert pacer.push([("text", "ab"), ("text", "\u0301 zz")], 1.0) == [("text", "ab\u0301")]  # 2 chars were due


def test_large_ascii_burst_is_cheap() -> None:
    pacer = SmoothPacer()
    pacer.push([("text", "a")], 0.0)
    pacer.push([("text", "b")], 0.5)
    emitted, _ = simulate(pacer, [(1.0, [("text", "x" * 200_000)])])
    assert "".join(item[1] for _, item in emitted) == "x" * 200_000
    assert len(emitted) <= 0.5 * 60 + 2


def test_invalid_settings_are_refused() -> None:
    for kwargs in ({"max_lag": -1}, {"min_piece_chars": 0}, {"max_pieces_per_second": 0}):
        try:
            SmoothPacer(**kwargs)
        except ValueError:
            continue
        raise AssertionError(kwargs)


ALPHABET = "ab c\nxyz漢字é" + "\u0301\u0308" + ZERO_WIDTH + "\U0001f600\U0001f3fd"
OTHER_KINDS = ("ping", "tool_call", "error", "replace", "agent_tool_call")

item_strategy = st.one_of(
    st.tuples(st.sampled_from(sorted(PACED)), st.text(alphabet=ALPHABET, max_size=120)),
    st.tuples(st.sampled_from(OTHER_KINDS), st.integers()),
)
schedule_strategy = st.lists(
    st.tuples(st.integers(min_value=0, max_value=500), st.lists(item_strategy, min_size=1, max_size=4)),
    min_size=1, max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(schedule=schedule_strategy, max_lag=st.sampled_from([0.0, 0.01, 0.05, 0.2]),
       min_piece=st.integers(min_value=1, max_value=6), pieces_per_second=st.sampled_from([5.0, 60.0, 1000.0]),
       end=st.booleans())
def test_guarantees_hold_for_any_schedule(schedule: list, max_lag: float, min_piece: int, pieces_per_second: float,
                                          end: bool) -> None:
    arrivals, now = [], 0.0
    for gap_ms, items in schedule:
        now += gap_ms / 1000
        arrivals.append((now, [(kind, value) for kind, value in items]))
    if end:
        arrivals.append((now + 0.001, [("end", ("stop", None))]))
    pacer = SmoothPacer(max_lag=max_lag, min_piece_chars=min_piece, max_pieces_per_second=pieces_per_second)
    emitted = check_guarantees(pacer, arrivals, max_lag)
    assert pacer.next_deadline() is None and pacer.flush() == []
    if end:
        assert emitted[-1][1] == ("end", ("stop", None))


def test_a_slow_models_single_tokens_go_out_whole_and_at_once() -> None:
    """One token every 100 ms is not a burst: spreading it would cut words (bench finding)."""
    pacer = SmoothPacer()
    for step in range(20):
        now = step * 0.1
        assert pacer.push([("text", " extraordinarily")], now) == [("text", " extraordinarily")]
        assert pacer.next_deadline() is None
