"""Disconnect storms, and the main benchmark's 1,000 held streams with their stop calls.

A storm: many clients stream through the gateway from a Dify task that never ends, then all
leave at once. The gateway must end every upstream stream (the emulator's count of active
streams drops to 0) and call Dify's stop endpoint once per task, and after several storms
its worker must hold no more memory or file descriptors than after the first. Its keep-alive
connections to Dify, kept for reuse by the pool, come and go with how many stop calls
overlapped: they are counted apart from the other descriptors.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import gevent

from bench import figures, procstat
from bench.figures import Side
from bench.load import HeldStreams
from dify_emulator.control import EmulatorProcess


def wait_for_stops(emulator: EmulatorProcess, tasks: set[str] | None, expected: int,
                   timeout: float) -> dict[str, Any]:
    """Poll the emulator's stop records until `expected` tasks were stopped (or `timeout`).

    `tasks`: only stops of these tasks count (None: every stop recorded since the reset).
    """
    started = time.perf_counter()
    while True:
        recorded = [stop["task_id"] for stop in emulator.stops()]
        ours = [task for task in recorded if tasks is None or task in tasks]
        stopped = len(set(ours))
        if stopped >= expected or time.perf_counter() - started >= timeout:
            return {"stop_calls": stopped, "stop_calls_repeated": len(ours) - stopped,
                    "stop_calls_other": len(recorded) - len(ours),
                    "stops_seconds": time.perf_counter() - started}
        gevent.sleep(0.1)


def dify_port(emulator: EmulatorProcess) -> int:
    return urlsplit(emulator.base_url).port or 80


def storm(gateway: Side, emulator: EmulatorProcess, raw: bytes, streams: int, release_timeout: float,
          stop_wait: float, settle: float) -> dict[str, Any]:
    """One cycle: open `streams`, wait until all are held, close them all, then measure."""
    emulator.reset()
    held = HeldStreams(gateway.target, raw, streams)
    tasks: set[str] = set()
    try:
        open_seconds = held.open(timeout=60)
        tasks = set(emulator.streams()["active_tasks"])
    finally:
        left_at = time.perf_counter()
        held.close()
    _, active_after = figures.wait_released(emulator.streams, release_timeout)
    release_seconds = time.perf_counter() - left_at
    stops = wait_for_stops(emulator, tasks, len(tasks), stop_wait)
    gevent.sleep(settle)  # let the worker finish its background work (stop calls, closes)
    return {
        "held": held.held,
        "open_seconds": open_seconds,
        "upstream_active_when_held": len(tasks),
        "release_seconds": release_seconds if active_after == 0 else None,
        "active_after": active_after,
        **stops,
        "errors": held.errors,
        "error_samples": held.batch.error_samples,
        "rss_kib": procstat.rss_kib(gateway.pid),
        "fds": procstat.fd_count(gateway.pid),
        "dify_connections": procstat.connections_to(gateway.pid, dify_port(emulator)),
    }


def disconnect_storms(gateway: Side, emulator: EmulatorProcess, cycles: int, streams: int,
                      directive: dict[str, Any], release_timeout: float, stop_wait: float,
                      settle: float) -> dict[str, Any]:
    raw = gateway.target.request(directive)
    rows = [storm(gateway, emulator, raw, streams, release_timeout, stop_wait, settle) for _ in range(cycles)]
    # Cycle 1 warms the worker up and fills its pool of keep-alive connections to Dify (each
    # an open fd, reused later): growth is measured from the end of cycle 2.
    first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
    releases = [row["release_seconds"] for row in rows]
    return {
        "cycles": cycles,
        "streams": streams,
        "directive": directive,
        "rows": rows,
        "worst_release_seconds": None if None in releases else max(releases),
        "fewest_stop_calls": min(row["stop_calls"] for row in rows),
        "errors": sum(row["errors"] for row in rows),
        "baseline_cycle": rows.index(first) + 1,
        "rss_first_kib": first["rss_kib"],
        "rss_last_kib": last["rss_kib"],
        "rss_growth_kib": last["rss_kib"] - first["rss_kib"],
        "fds_first": first["fds"] - first["dify_connections"],
        "fds_last": last["fds"] - last["dify_connections"],
        "fd_growth": (last["fds"] - last["dify_connections"]) - (first["fds"] - first["dify_connections"]),
    }


def held_with_stops(gateway: Side, emulator: EmulatorProcess, streams: int, directive: dict[str, Any],
                    hold_seconds: float, release_timeout: float, stop_wait: float) -> dict[str, Any]:
    """Figure 5 of `python -m bench` (`figures.held_streams`), plus the stop calls it caused."""
    emulator.reset()
    result = figures.held_streams(gateway, streams, directive, hold_seconds, emulator.streams, release_timeout)
    result.update(wait_for_stops(emulator, None, streams, stop_wait))
    return result
