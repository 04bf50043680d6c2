"""Orchestration of `python -m bench faults`: start the processes, run the three parts, report.

One emulator (request recording on, so stop calls are recorded) serves every gateway that
has a Dify. The main gateway runs the storms, the held streams and most fault cases; the
cases that need other settings get a gateway of their own, started and stopped around them.
Expects a gevent-patched process (see bench/__main__.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.faults import cases, gateways, storms
from bench.faults import report as fault_report
from bench.faults.gateways import Gateway
from bench.figures import Side
from bench.run import (
    HELD_DIRECTIVE,
    HELD_STREAMS,
    HOLD_SECONDS,
    RELEASE_TIMEOUT,
    Runner,
    machine_meta,
    raise_fd_limit,
    run_and_report,
)
from bench.targets import DIFY_APP_KEY, gateway_target
from dify_emulator.apps import DEFAULT_APPS
from dify_emulator.control import EmulatorProcess, start_emulator
from tests.gateway_process import free_port

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "faults.json"

# Sizes: chosen to keep the whole run well under 2 minutes on 2 cores.
STORM_CYCLES, STORM_STREAMS = 5, 200
# Dify pings only every 60 s: nothing but the gateway can end these streams.
STORM_DIRECTIVE = {"tokens": 5, "never_end": True, "ping_interval_s": 60}
STOP_WAIT = 10.0  # seconds to wait for the stop calls of one storm
SETTLE = 1.0  # seconds between a storm's end and reading the worker's memory and descriptors
CASE_STREAMS, CASE_BODIES = 2, 2  # requests per fault case
REQUEST_BOUND = 15.0  # seconds any one request of a fault case may take

BIG_EVENT_KEY = "app-bench-big-event"
DIFY_KEYS = f"{DIFY_APP_KEY},{BIG_EVENT_KEY}"

Starter = Callable[[], contextlib.AbstractContextManager[Gateway]]


def emulator_apps() -> list[dict[str, Any]]:
    """The emulator's `demo-chat`, and an app whose every answer starts with one ~2 MB event."""
    demo_chat = next(app for app in DEFAULT_APPS if app["key"] == DIFY_APP_KEY)
    big_event = {"key": BIG_EVENT_KEY, "name": cases.BIG_EVENT_MODEL, "mode": "chat",
                 "default_scenario": {"tokens": 3, "raw_before": [cases.big_event()]}}
    return [demo_chat, big_event]


def gateway_starters(emulator: EmulatorProcess, main: Gateway) -> dict[str, Starter]:
    """The gateways of the fault cases, by the name `cases.Case.gateway` uses."""
    with_dify = {"DIFY_API_BASE": emulator.base_url, "DIFY_API_KEYS": DIFY_KEYS}
    return {
        "main": lambda: contextlib.nullcontext(main),
        "timeout": lambda: gateways.start("timeout", {**with_dify, "TIMEOUT": "2"}, has_dify=True),
        # A port that was free a moment ago: nothing listens there.
        "refused": lambda: gateways.start("refused", {"DIFY_API_BASE": f"http://127.0.0.1:{free_port()}/v1",
                                                      "DIFY_API_KEYS": DIFY_KEYS}, has_dify=False),
        "dns": lambda: gateways.start("dns", {"DIFY_API_BASE": "http://nonexistent.invalid/v1",
                                              "DIFY_API_KEYS": DIFY_KEYS}, has_dify=False),
    }


def logged(gateway: Gateway, measure: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """`measure`, with what the gateway logged while it ran (it logs at WARNING and above)."""

    def run() -> dict[str, Any]:
        gateway.new_log_lines()
        figures = measure()
        log = gateway.new_log_lines()
        return {**figures, "gateway_log": gateways.log_summary(log), "gateway_log_lines": log[:10]}

    return run


def measure_all(runner: Runner) -> None:
    with start_emulator(apps=emulator_apps()) as emulator:
        env = {"DIFY_API_BASE": emulator.base_url, "DIFY_API_KEYS": DIFY_KEYS}
        with gateways.start("main", env, has_dify=True) as main:
            side = Side(gateway_target(main.base_url), main.worker)
            runner.run("storms", f"1/3 disconnect storms, {STORM_CYCLES} x {STORM_STREAMS} streams", logged(
                main, lambda: storms.disconnect_storms(side, emulator, STORM_CYCLES, STORM_STREAMS, STORM_DIRECTIVE,
                                                       RELEASE_TIMEOUT, STOP_WAIT, SETTLE)))
            runner.run("held", f"2/3 {HELD_STREAMS} held streams", logged(
                main, lambda: storms.held_with_stops(side, emulator, HELD_STREAMS, HELD_DIRECTIVE, HOLD_SECONDS,
                                                     RELEASE_TIMEOUT, STOP_WAIT)))
            runner.run("faults", f"3/3 {len(cases.CASES)} fault cases",
                       lambda: cases.run_all(gateway_starters(emulator, main), emulator, CASE_STREAMS,
                                             CASE_BODIES, REQUEST_BOUND))


def main() -> int:
    meta = {**machine_meta(raise_fd_limit()), "emulator_recording": True}
    results, runner = run_and_report(meta, measure_all, fault_report.render, RESULTS)
    failed_cases = [row for row in results.get("faults", {}).get("cases", []) if row["verdict"] == "FAIL"]
    return 1 if runner.crashed or failed_cases else 0
