"""The printed table of `python -m bench faults`.

Storm and held-stream figures are marked `ok` or `MISS` against their targets (information,
as in the main benchmark); fault cases `ok` or `FAIL` (see bench/faults/cases.py).
"""

from __future__ import annotations

from typing import Any

from bench.report import num, section, verdict

# Storm figure targets.
RELEASE_TARGET_S = 5.0
RSS_GROWTH_TARGET_KIB = 5 * 1024
FD_GROWTH_TARGET = 10


def _row(cells: tuple[Any, ...], widths: tuple[int, ...], left: bool = False) -> str:
    """The first cell left-aligned, the others right-aligned (`left`: all left-aligned).

    A cell wider than its column pushes the rest of the line to the right.
    """
    first, *rest = (str(cell) for cell in cells)
    line = first.ljust(widths[0])
    for cell, width in zip(rest, widths[1:], strict=True):
        line += " " + (cell.ljust(width - 1) if left else cell.rjust(width - 1))
    return line.rstrip()


FIGURE_WIDTHS = (48, 26, 18, 6)


def _figure(name: str, value: str, target: str = "", verdict: str = "") -> str:
    return _row((f"  {name}", value, target, verdict), FIGURE_WIDTHS)


def _growth(first: int, last: int, scale: float = 1.0, digits: int = 0) -> str:
    return f"{first / scale:.{digits}f} -> {last / scale:.{digits}f} ({(last - first) / scale:+.{digits}f})"


def _storms(s: dict[str, Any]) -> list[str]:
    widths = (9, 12, 20, 14, 9, 18, 12, 12)
    lines = [f"1. Disconnect storms: {s['cycles']} cycles x {s['streams']} streams (never_end), "
             "all clients leave at once",
             _row(("  cycle", "held in (s)", "upstream ended (s)", "stop calls", "errors", "worker RSS (MiB)",
                   "worker fds", "Dify conns"), widths)]
    for number, row in enumerate(s["rows"], 1):
        lines.append(_row((f"  {number}", f"{row['open_seconds']:.2f}", num(row["release_seconds"], 2),
                           f"{row['stop_calls']}/{row['upstream_active_when_held']}", row["errors"],
                           f"{row['rss_kib'] / 1024:.1f}", row["fds"], row["dify_connections"]), widths))
    worst = s["worst_release_seconds"]
    lines += [
        _figure("upstream streams ended after close, worst (s)", num(worst, 2), f"<= {RELEASE_TARGET_S:g}",
                verdict(worst, RELEASE_TARGET_S)),
        _figure("stop calls per cycle, fewest", num(s["fewest_stop_calls"]), str(s["streams"]),
                "ok" if s["fewest_stop_calls"] >= s["streams"] else "MISS"),
        _figure("errors, all cycles", num(s["errors"]), "0", verdict(s["errors"], 0)),
        _figure(f"worker RSS after cycle {s['baseline_cycle']} -> {s['cycles']} (MiB)",
                _growth(s["rss_first_kib"], s["rss_last_kib"], 1024, 1), "growth < 5",
                "ok" if s["rss_growth_kib"] < RSS_GROWTH_TARGET_KIB else "MISS"),
        _figure(f"worker fds but Dify conns, cycle {s['baseline_cycle']} -> {s['cycles']}",
                _growth(s["fds_first"], s["fds_last"]), f"growth < {FD_GROWTH_TARGET}",
                "ok" if s["fd_growth"] < FD_GROWTH_TARGET else "MISS"),
    ]
    lines.append(_figure("gateway log during the storms", s["gateway_log"]))
    return lines


def _held(h: dict[str, Any]) -> list[str]:
    release = h["release_seconds"] if h["released"] else None
    return [
        f"2. {h['streams']:,} held streams on one worker (figure 5 of `python -m bench`)",
        _figure("held / opened in (s)", f"{h['held']:,} / {h['open_seconds']:.1f}"),
        _figure("errors", num(h["errors"]), "0", verdict(h["errors"], 0)),
        _figure("upstream streams ended after close (s)", num(release, 2), f"<= {RELEASE_TARGET_S:g}",
                verdict(release, RELEASE_TARGET_S)),
        _figure("stop calls", num(h["stop_calls"]), f"{h['streams']:,}",
                "ok" if h["stop_calls"] >= h["streams"] else "MISS"),
        _figure("gateway log", h["gateway_log"]),
    ]


CASE_WIDTHS = (30, 50, 28, 12, 8, 12, 5)


def _faults(f: dict[str, Any]) -> list[str]:
    lines = [f"3. Fault cases: {f['streams_per_case']} streaming + {f['bodies_per_case']} non-streaming requests "
             f"each (bound {f['request_bound_s']:g} s), then a normal request",
             _row(("  case", "streaming", "non-streaming", "Dify calls", "worker", "gateway log", ""),
                  CASE_WIDTHS, left=True)]
    for row in f["cases"]:
        lines.append(_row((f"  {row['case']}", row["streaming"], row["non_streaming"], row["dify"], row["after"],
                           row["log"], row["verdict"]), CASE_WIDTHS, left=True))
        lines += [f"      FAIL: {problem}" for problem in row["problems"]]
    return lines


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"OpenDify fault report: {meta['cores']} cores, gateway {meta['gateway_workers']} worker (gevent), emulator "
        f"1 worker (recording on); {meta['seconds']:.0f} s",
        f"machine: {meta['python_reference_us']:.1f} us per reference event (bench/calibrate.py), load average "
        f"{meta['load_average_before']:.2f} before, {meta['load_average_after']:.2f} after",
        "",
    ]
    for name, part in (("storms", _storms), ("held", _held)):
        figures = section(results, name)
        if figures:
            lines += part(figures)
    faults = section(results, "faults")
    if faults:
        lines += _faults(faults)
    failed = [name for name, value in results.items() if isinstance(value, dict) and "crashed" in value]
    lines += [f"{name}: CRASHED: {results[name]['crashed']}" for name in failed]
    return "\n".join(lines)
