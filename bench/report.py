"""The printed table and the JSON file of one benchmark run.

The table compares each figure with its target and marks it `ok` or `MISS`; that mark is
information only, the benchmark never fails on a timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = ("figure", "direct", "gateway", "difference", "target", "")
WIDTHS = (44, 11, 11, 14, 16, 6)

# Figure 6 (ms). Pacing never makes a stream slower than Dify: a paced stream ends at most
# SMOOTH_MAX_LAG_MS (50) after Dify's end, plus noise, which the unpaced streams show.
SMOOTH_ADDED_MS = 60  # mean duration, paced - unpaced
SMOOTH_END_DELAY_MS = 50  # p50; the max may add the unpaced streams' own lateness
SMOOTH_GAP_MS = 50  # a paced stream's largest gap (p50): 3 piece intervals at 60 pieces/s
SMOOTH_STEADY_ADDED_MS = 10  # steady text passes untouched: mean duration, paced - unpaced
# Figure 7: a Responses API stream costs at most this much more CPU per token than a chat stream,
# and its first token comes at most this many ms later.
RESPONSES_CPU_RATIO = 1.3
RESPONSES_FIRST_ADDED_MS = 0.5
# Figure 9: CPU that metrics add to a non-streaming request (ms).
METRICS_ADDED_CPU_MS = 0.1
# Figures 4 and 8: what a held stream may keep in its worker (25 kB).
RSS_PER_STREAM_KIB = 24.4


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def verdict(value: Any, limit: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return "ok" if value <= limit else "MISS"


def _kernel(share: float) -> str:
    return f"{share * 100:.0f}% kernel"


def _line(cells: tuple[str, ...]) -> str:
    first, *rest = cells
    right = "".join(cell.rjust(width) for cell, width in zip(rest, WIDTHS[1:], strict=True))
    return (first.ljust(WIDTHS[0]) + right).rstrip()


def section(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    figures = results.get(name)
    return None if not figures or "crashed" in figures else figures


def _rows(results: dict[str, Any]) -> list[tuple[str, ...] | str]:
    rows: list[tuple[str, ...] | str] = []
    t = section(results, "throughput")
    if t:
        rows.append(f"1. Non-streaming, {t['requests']} requests, {t['concurrency']} concurrent")
        rows.append(("  requests/s", num(t["direct_rps"]), num(t["gateway_rps"]), f"x{t['ratio']:.2f}", "", ""))
        cpu = t["gateway_cpu_ms_per_request"]
        rows.append(("  gateway CPU per request (ms)", "", num(cpu, 3), _kernel(t["gateway_cpu_system_share"]),
                     "<= 1.1", verdict(cpu, 1.1)))
        rows.append(("  gateway CPU per GET /healthz (ms): floor", "", num(t["gateway_healthz_cpu_ms_per_request"], 3),
                     "", "", ""))
        rows.append(("  emulator CPU per request (ms)", num(t["emulator_cpu_ms_per_request_direct"], 3),
                     num(t["emulator_cpu_ms_per_request_via_gateway"], 3), "", "", ""))
        rows.append(("  load client CPU per request (ms)", num(t["client_cpu_ms_per_request_direct"], 3),
                     num(t["client_cpu_ms_per_request_via_gateway"], 3), "", "", ""))
        errors = t["direct"]["errors"] + t["gateway"]["errors"] + t["healthz"]["errors"]
        rows.append(("  errors", num(t["direct"]["errors"]), num(t["gateway"]["errors"] + t["healthz"]["errors"]),
                     "", "0", verdict(errors, 0)))
    f = section(results, "first_byte")
    if f:
        rows.append(f"2. Time to first content event, {f['requests']} sequential streams")
        rows.append(("  p50 (ms)", num(f["direct_p50_ms"], 2), num(f["gateway_p50_ms"], 2),
                     f"+{num(f['added_p50_ms'], 2)}", "added <= 2", verdict(f["added_p50_ms"], 2)))
        rows.append(("  p99 (ms)", num(f["direct_p99_ms"], 2), num(f["gateway_p99_ms"], 2),
                     f"+{num(f['added_p99_ms'], 2)}", "", ""))
        rows.append(("  errors", num(f["direct"]["errors"]), num(f["gateway"]["errors"]), "", "0",
                     verdict(f["direct"]["errors"] + f["gateway"]["errors"], 0)))
    r = section(results, "relay_cost")
    if r:
        rows.append(f"3. Relay cost, {r['streams']} streams x {r['tokens_per_stream']} tokens (back to back)")
        rows.append(("  content events/s", num(r["direct_events_per_s"], 0), num(r["gateway_events_per_s"], 0),
                     "", "", ""))
        cpu = r["gateway_cpu_us_per_event"]
        rows.append(("  gateway CPU per event (us)", "", num(cpu), _kernel(r["gateway_cpu_system_share"]), "<= 40",
                     verdict(cpu, 40)))
        rows.append((f"  paced: {r['paced_streams']} x {r['paced_tokens_per_stream']} tokens, "
                     f"{r['paced_delay_ms']:g} ms apart (us)", "", num(r["paced_cpu_us_per_event"]),
                     _kernel(r["paced_cpu_system_share"]), "", ""))
        errors = sum(r[side]["errors"] for side in ("direct", "gateway", "paced"))
        missing = r["gateway_events_missing"] + r["paced_events_missing"]
        rows.append(("  errors / events missing", "", f"{errors} / {missing}", "", "0", verdict(errors + missing, 0)))
    m = section(results, "memory")
    if m:
        rows.append(f"4. Memory, {m['streams']} held slow streams opened {m['per_second']:g}/s (fresh gateway)")
        rows.append(("  worker RSS before -> held (MiB)", "", f"{m['rss_before_kib'] / 1024:.1f} -> "
                     f"{m['rss_held_kib'] / 1024:.1f}", "", "", ""))
        kib = m["kib_per_stream"]
        rows.append(("  RSS per held stream (KiB)", "", num(kib), "", f"<= {RSS_PER_STREAM_KIB}",
                     verdict(kib, RSS_PER_STREAM_KIB)))
        rows.append(("  errors", "", num(m["errors"]), "", "0", verdict(m["errors"], 0)))
    a = section(results, "memory_at_once")
    if a:
        rows.append(("  opened at once: RSS per held stream (KiB)", "", num(a["kib_per_stream"]), "", "", ""))
        rows.append(("  opened at once: errors", "", num(a["errors"]), "", "0", verdict(a["errors"], 0)))
    h = section(results, "held")
    if h:
        rows.append(f"5. {h['streams']:,} held streams on one worker")
        rows.append(("  held / opened in (s)", "", f"{h['held']:,} / {h['open_seconds']:.1f}", "", "", ""))
        rows.append(("  errors", "", num(h["errors"]), "", "0", verdict(h["errors"], 0)))
        per_stream = (h["rss_held_kib"] - h["rss_before_kib"]) / h["streams"]
        rows.append(("  RSS per held stream (KiB)", "", num(per_stream), "", "", ""))
        release = h["release_seconds"] if h["released"] else math.nan
        left = h["active_after"] if h["active_after"] is not None else math.nan
        rows.append(("  upstream streams ended after close (s)", "", num(release, 2), "", "<= 5",
                     verdict(release, 5)))
        rows.append(("  emulator streams still active", "", num(left), "", "0", verdict(left, 0)))
    s = section(results, "smooth")
    if s:
        rows += _smooth_rows(s["bursty"], s["steady"], s["warmup"]["errors"])
    p = section(results, "responses")
    if p:
        rows.append(f"7. Responses API next to chat, {p['streams']} x {p['tokens_per_stream']} tokens; "
                    f"{p['requests']} first tokens")
        rows.append(("", "chat", "responses", "", "", ""))
        ratio = p["cpu_ratio"]
        rows.append(("  gateway CPU per relayed token (us)", num(p["chat_cpu_us_per_token"]),
                     num(p["responses_cpu_us_per_token"]), f"x{ratio:.2f}", f"<= x{RESPONSES_CPU_RATIO}",
                     verdict(ratio, RESPONSES_CPU_RATIO)))
        rows.append(("  time to first token, p50 (ms)", num(p["chat_first_p50_ms"], 2),
                     num(p["responses_first_p50_ms"], 2), f"{p['first_added_ms']:+.2f}",
                     f"added <= {RESPONSES_FIRST_ADDED_MS}", verdict(p["first_added_ms"], RESPONSES_FIRST_ADDED_MS)))
        errors = p["chat_errors"] + p["responses_errors"]
        rows.append(("  errors / tokens missing", num(p["chat_errors"]), num(p["responses_errors"]), "", "0",
                     verdict(errors, 0)))
    c = section(results, "scale")
    if c:
        rows += _scale_rows(c)
    g = section(results, "metrics")
    if g:
        rows.append(f"9. Metrics, {g['requests']} non-streaming requests, {g['concurrency']} concurrent "
                    f"(fresh gateways)")
        rows.append(("", "metrics off", "metrics on", "", "", ""))
        rows.append(("  gateway CPU per request (ms)", num(g["off_cpu_ms_per_request"], 3),
                     num(g["on_cpu_ms_per_request"], 3), f"{g['added_cpu_ms_per_request']:+.3f} x{g['ratio']:.2f}",
                     f"added <= {METRICS_ADDED_CPU_MS}", verdict(g["added_cpu_ms_per_request"], METRICS_ADDED_CPU_MS)))
        rows.append((f"  gateway CPU per GET /metrics (ms), {g['scrapes']} scrapes", "", num(g["scrape_cpu_ms"], 2),
                     "", "", ""))
        rows.append(("  chat requests counted by the metrics", "", num(int(g["chat_requests_counted"])), "",
                     "all sent", ""))
        errors = g["off"]["errors"] + g["on"]["errors"] + g["scrape"]["errors"]
        rows.append(("  errors", num(g["off"]["errors"]), num(g["on"]["errors"] + g["scrape"]["errors"]), "", "0",
                     verdict(errors, 0)))
    return rows


def _scale_rows(c: dict[str, Any]) -> list[tuple[str, ...] | str]:
    """Figure 8: many held streams on a gateway with the default settings, its workers together."""
    limits = "/".join(f"{limit:,}" for limit in sorted(set(c["worker_open_files"])))
    return [
        f"8. {c['streams']:,} held streams, default settings ({c['workers']} workers, open files {limits}), "
        f"opened {c['per_second']:g}/s",
        ("  held / opened in (s)", "", f"{c['held']:,} / {c['open_seconds']:.1f}", "", "", ""),
        ("  streams per worker", "", " / ".join(f"{count:,}" for count in c["streams_per_worker"]), "", "", ""),
        ("  errors", "", num(c["errors"]), "", "0", verdict(c["errors"], 0)),
        ("  RSS per held stream (KiB)", "", num(c["kib_per_stream"]), "", f"<= {RSS_PER_STREAM_KIB}",
         verdict(c["kib_per_stream"], RSS_PER_STREAM_KIB)),
        ("  open files per held stream", "", num(c["fds_per_stream"], 2), "", "", ""),
        (f"  CPU per held stream (us/s), {c['hold_seconds']:g} s held", "", num(c["cpu_us_per_stream_second"]),
         "", "", ""),
        ("  first content event while opening, p50 (ms)", "", num(c["first_event_p50_ms"]), "", "", ""),
        ("  first content event while opening, p99 (ms)", "", num(c["first_event_p99_ms"]), "", "", ""),
        ("  upstream streams ended after close (s)", "", num(c["release_seconds"] if c["released"] else math.nan, 2),
         "", "", ""),
    ]


def _smooth_rows(b: dict[str, Any], d: dict[str, Any], warmup_errors: int) -> list[tuple[str, ...] | str]:
    """Figure 6: its columns are the gateway with smooth output off and on."""
    burst = b["directive"]
    bursts = math.ceil(burst["tokens"] / burst["burst"])
    noise = b["off_late_max_ms"]
    rows: list[tuple[str, ...] | str] = [
        f"6. Smooth output, {b['streams']} x {bursts} bursts of {burst['burst']} words, {burst['delay_ms']:g} ms "
        f"apart, {b['rounds']} rounds",
        ("", "pacing off", "pacing on", "", "", ""),
        ("  stream duration (ms)", num(b["off_seconds"] * 1000, 0), num(b["on_seconds"] * 1000, 0),
         f"{b['added_ms']:+.1f} x{b['ratio']:.3f}", f"added <= {SMOOTH_ADDED_MS}",
         verdict(b["added_ms"], SMOOTH_ADDED_MS)),
        ("  end delay after unpaced [DONE], p50 (ms)", "", num(b["on_late_p50_ms"]), "", f"<= {SMOOTH_END_DELAY_MS}",
         verdict(b["on_late_p50_ms"], SMOOTH_END_DELAY_MS)),
        ("  end delay max (ms); off column: noise", num(noise), num(b["on_late_max_ms"]), "",
         f"<= {SMOOTH_END_DELAY_MS} + noise", verdict(b["on_late_max_ms"], SMOOTH_END_DELAY_MS + max(0.0, noise))),
        ("  content writes per stream", num(b["off_writes_per_stream"]), num(b["on_writes_per_stream"]), "", "", ""),
        ("  largest gap after 1st burst, p50 (ms)", num(b["off_largest_gap_p50_ms"]), num(b["on_largest_gap_p50_ms"]),
         "", f"on <= {SMOOTH_GAP_MS}", verdict(b["on_largest_gap_p50_ms"], SMOOTH_GAP_MS)),
        ("  largest gap after 1st burst, max (ms)", num(b["off_largest_gap_max_ms"]), num(b["on_largest_gap_max_ms"]),
         "", "", ""),
        ("  gateway CPU per stream (ms)", num(b["off_cpu_ms_per_stream"]), num(b["on_cpu_ms_per_stream"]), "", "", ""),
        (f"  steady: {d['directive']['tokens']} words {d['directive']['delay_ms']:g} ms apart (ms)",
         num(d["off_seconds"] * 1000, 0), num(d["on_seconds"] * 1000, 0), f"{d['added_ms']:+.1f}",
         f"added <= {SMOOTH_STEADY_ADDED_MS}", verdict(d["added_ms"], SMOOTH_STEADY_ADDED_MS)),
        ("  steady: content writes per stream", num(d["off_writes_per_stream"]), num(d["on_writes_per_stream"]), "",
         "", ""),
    ]
    off_errors = b["off"]["errors"] + d["off"]["errors"]
    on_errors = b["on"]["errors"] + d["on"]["errors"] + warmup_errors
    rows.append(("  errors", num(off_errors), num(on_errors), "", "0", verdict(off_errors + on_errors, 0)))
    return rows


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"OpenDify benchmark: {meta['cores']} cores, gateway {meta['gateway_workers']} worker (gevent), smooth output "
        f"{meta['smooth_output']} (figure 6: on vs off), emulator 1 worker; {meta['seconds']:.0f} s",
        f"machine: {meta['python_reference_us']:.1f} us per reference event (bench/calibrate.py), load average "
        f"{meta['load_average_before']:.2f} before, {meta['load_average_after']:.2f} after",
        "",
        _line(COLUMNS),
        "-" * sum(WIDTHS),
    ]
    for row in _rows(results):
        lines.append(row if isinstance(row, str) else _line(row))
    failed = [name for name, value in results.items() if isinstance(value, dict) and "crashed" in value]
    lines += [f"{name}: CRASHED: {results[name]['crashed']}" for name in failed]
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
