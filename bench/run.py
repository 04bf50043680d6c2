"""Orchestration of `python -m bench`: start the processes, run the nine measurements, report.

Starts one emulator and one gateway (one gevent worker, smooth output off), runs the
measurements of bench/README.md (figures 4, 6, 8 and 9 start gateways of their own), prints a table
and writes bench/results/latest.json. Timings are reported, never asserted: the exit status is
non-zero only when a measurement crashed.
Expects a gevent-patched process (see bench/__main__.py).
"""

import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import requests

from bench import calibrate, figures, procstat, report
from bench.figures import Side
from bench.targets import dify_target, gateway_target, responses_target
from config import load_settings
from dify_emulator.control import start_emulator
from tests.gateway_process import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"

# Sizes of the runs: chosen to keep the whole benchmark near 1-2 minutes on 2 cores.
THROUGHPUT_REQUESTS, THROUGHPUT_CONCURRENCY = 2000, 16
FIRST_BYTE_REQUESTS = 300
RELAY_STREAMS, RELAY_TOKENS = 4, 5000
RESPONSES_ROUNDS = 3
METRICS_REQUESTS, METRICS_ROUNDS, METRICS_SCRAPES = 2000, 4, 50
PACED_STREAMS, PACED_TOKENS, PACED_DELAY_MS = 100, 200, 20.0
MEMORY_STREAMS, MEMORY_PER_SECOND = 500, 100.0
MEMORY_DIRECTIVE = {"tokens": 5, "never_end": True, "ping_interval_s": 60}
HELD_STREAMS, HOLD_SECONDS = 1000, 5.0
HELD_DIRECTIVE = {"tokens": 5, "never_end": True, "ping_interval_s": 5}
RELEASE_TIMEOUT = 15.0
SCALE_STREAMS, SCALE_PER_SECOND, SCALE_HOLD_SECONDS, SCALE_PING_SECONDS = 10_000, 200.0, 10.0, 5.0
SCALE_RELEASE_TIMEOUT = 30.0
SMOOTH_STREAMS, SMOOTH_ROUNDS, SMOOTH_STEADY_ROUNDS = 20, 3, 2
SMOOTH_BURSTY = {"tokens": 200, "burst": 20, "delay_ms": 300}  # 10 bursts of 20 words, 300 ms apart
SMOOTH_STEADY = {"tokens": 100, "delay_ms": 20}  # one word every 20 ms: nothing to smooth

# Smooth output (on by default) re-chunks streams: figures 1-5 measure the relay itself, so
# their gateways run with it off; figure 6 compares it on and off.
MAIN_SMOOTH_OUTPUT = "off"

GATEWAY_ENV = {
    "DIFY_API_KEYS": "app-demo-chat",
    "VALID_API_KEYS": "sk-bench",
    "WORKERS": "1",
    "CONVERSATION_MEMORY_MODE": "0",
    "WORKER_CONNECTIONS": "2000",
    "ACCESS_LOG": "",
    "LOG_LEVEL": "WARNING",
}


def raise_fd_limit() -> int:
    """Figure 8's 10,000 held streams need ~10,000 fds here, as many in bench/held_dify.py and
    ~20,000 in the gateway (which inherit the limit; the gateway lifts its own to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def workers_of(master_pid: int, count: int, timeout: float = 10.0) -> list[int]:
    """The pids of gunicorn's `count` workers (their CPU and memory are what is measured)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = procstat.children(master_pid)
        if len(workers) == count:
            return workers
        gevent.sleep(0.1)
    raise RuntimeError(f"expected {count} workers under pid {master_pid}, found {procstat.children(master_pid)}")


def only_worker(master_pid: int) -> int:
    return workers_of(master_pid, 1)[0]


def start_gateway(emulator_base_url: str, smooth_output: str = MAIN_SMOOTH_OUTPUT,
                  **extra: str) -> tuple[GatewayProcess, Side]:
    gateway = GatewayProcess({**GATEWAY_ENV, "DIFY_API_BASE": emulator_base_url, "SMOOTH_OUTPUT": smooth_output,
                              **extra})
    try:
        return gateway, Side(gateway_target(gateway.base_url), only_worker(gateway.pid))
    except BaseException:
        gateway.stop()
        raise


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


class Runner:
    """Runs measurements one by one; a crash is recorded and the next one still runs."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.crashed = False

    def run(self, name: str, title: str, measure: Callable[[], dict[str, Any]]) -> None:
        print(f"[bench] {title} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            self.results[name] = measure()
        except Exception as exc:
            traceback.print_exc()
            self.crashed = True
            self.results[name] = {"crashed": f"{type(exc).__name__}: {exc}"}
        print(f"[bench]   {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def memory_on_fresh_gateway(emulator: Any, per_second: float | None) -> dict[str, Any]:
    """Figure 4 on a gateway of its own: memory the other runs left allocated would hide the growth."""
    process, gateway = start_gateway(emulator.base_url, GRACEFUL_TIMEOUT="1")
    with process:
        result = figures.memory_per_stream(gateway, MEMORY_STREAMS, MEMORY_DIRECTIVE, per_second)
    # Its held streams end upstream when it stops; the next run must not see them.
    result["release_after_stop_seconds"] = figures.wait_released(emulator.streams, RELEASE_TIMEOUT)[0]
    return result


@contextmanager
def held_dify(ping_seconds: float) -> Iterator[tuple[str, Callable[[], dict[str, Any]]]]:
    """bench/held_dify.py in a process of its own: its base URL, and its count of open streams."""
    process = subprocess.Popen([sys.executable, "-m", "bench.held_dify", "--ping", str(ping_seconds)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        base_url = process.stdout.readline().split()[-1]
        yield base_url, lambda: requests.get(base_url + "/streams", timeout=5).json()
    finally:
        process.terminate()
        process.wait(10)


def streams_on_default_gateway() -> dict[str, Any]:
    """Figure 8, on a Dify that only holds streams (bench/held_dify.py: the emulator cannot
    hold 10,000 on two cores) and a gateway with the default server settings: WORKERS,
    WORKER_CONNECTIONS and MAX_CONCURRENT_REQUESTS empty (the default; WORKER_CONNECTIONS then
    follows the open-files limit), smooth output at its default."""
    with held_dify(SCALE_PING_SECONDS) as (base_url, upstream_streams):
        env = {**GATEWAY_ENV, "DIFY_API_BASE": base_url, "WORKERS": "", "WORKER_CONNECTIONS": "",
               "MAX_CONCURRENT_REQUESTS": ""}
        with GatewayProcess(env) as gateway:
            workers = workers_of(gateway.pid, load_settings(env).workers)
            return figures.streams_at_scale(gateway_target(gateway.base_url), workers, SCALE_STREAMS,
                                            SCALE_PER_SECOND, SCALE_HOLD_SECONDS, upstream_streams,
                                            SCALE_RELEASE_TIMEOUT)


def smooth_output_on_and_off(emulator: Any) -> dict[str, Any]:
    """Figure 6 on two fresh gateways, the same but for smooth output: off and on."""
    off_process, off = start_gateway(emulator.base_url, smooth_output="off")
    with off_process:
        on_process, on = start_gateway(emulator.base_url, smooth_output="on")
        with on_process:
            return figures.smooth_output(off, on, SMOOTH_BURSTY, SMOOTH_STEADY, SMOOTH_STREAMS, SMOOTH_ROUNDS,
                                         SMOOTH_STEADY_ROUNDS)


def metrics_on_and_off(emulator: Any) -> dict[str, Any]:
    """Figure 9 on two fresh gateways, the same but for METRICS: off and on."""
    off_process, off = start_gateway(emulator.base_url, METRICS="off")
    with off_process:
        on_process, on = start_gateway(emulator.base_url, METRICS="on")
        with on_process:
            result = figures.metrics_on_and_off(off, on, METRICS_REQUESTS, THROUGHPUT_CONCURRENCY, METRICS_ROUNDS,
                                                METRICS_SCRAPES)
            # That the "on" side really counted: its chat completions in opendify_requests_total.
            scrape = requests.get(on_process.root_url + "/metrics", timeout=10,
                                  headers={"Authorization": f"Bearer {GATEWAY_ENV['VALID_API_KEYS']}"})
            result["chat_requests_counted"] = sum(
                float(line.rsplit(" ", 1)[1]) for line in scrape.text.splitlines()
                if line.startswith("opendify_requests_total{") and 'route="/chat/completions"' in line)
            return result


def measure_all(runner: Runner) -> None:
    with start_emulator(env={"EMULATOR_RECORD": "0"}) as emulator:
        direct = Side(dify_target(emulator.base_url), only_worker(emulator.pid))
        gateway_process, gateway = start_gateway(emulator.base_url)
        with gateway_process:
            runner.run("throughput", "1/9 non-streaming throughput", lambda: figures.throughput(
                direct, gateway, THROUGHPUT_REQUESTS, THROUGHPUT_CONCURRENCY))
            runner.run("first_byte", "2/9 time to first content event", lambda: figures.first_byte(
                direct, gateway, FIRST_BYTE_REQUESTS))
            runner.run("relay_cost", "3/9 CPU per relayed event", lambda: figures.relay_cost(
                direct, gateway, RELAY_TOKENS, RELAY_STREAMS, PACED_STREAMS, PACED_TOKENS, PACED_DELAY_MS))
            responses = Side(responses_target(gateway_process.base_url), gateway.pid)
            runner.run("responses", "7/9 a Responses stream next to a chat stream",
                       lambda: figures.responses_next_to_chat(gateway, responses, RELAY_TOKENS, RELAY_STREAMS,
                                                              RESPONSES_ROUNDS, FIRST_BYTE_REQUESTS))
            runner.run("memory", "4/9 memory per held stream", lambda: memory_on_fresh_gateway(
                emulator, MEMORY_PER_SECOND))
            # The same streams opened at once: the allocators keep the peak of 500 calls setting up together.
            runner.run("memory_at_once", "4/9 memory per held stream, opened at once", lambda: memory_on_fresh_gateway(
                emulator, None))
            runner.run("held", f"5/9 {HELD_STREAMS} held streams", lambda: figures.held_streams(
                gateway, HELD_STREAMS, HELD_DIRECTIVE, HOLD_SECONDS, emulator.streams, RELEASE_TIMEOUT))
        runner.run("smooth", "6/9 smooth output on vs off", lambda: smooth_output_on_and_off(emulator))
        runner.run("metrics", "9/9 metrics on vs off", lambda: metrics_on_and_off(emulator))
    runner.run("scale", f"8/9 {SCALE_STREAMS:,} held streams, default settings", streams_on_default_gateway)


def machine_meta(fd_limit: int) -> dict[str, Any]:
    """The header of a results file: when, what, and on which machine."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "gateway_workers": 1,
        "fd_limit": fd_limit,
        "clock_ticks_per_s": procstat.CLOCK_TICKS,
        "load_average_before": os.getloadavg()[0],
        "python_reference_us": calibrate.reference_us(),
    }


def run_and_report(meta: dict[str, Any], measure: Callable[[Runner], None],
                   render: Callable[[dict[str, Any]], str], path: Path) -> tuple[dict[str, Any], Runner]:
    """Measure, then write the JSON and print the table, also after a crash."""
    started = time.perf_counter()
    results: dict[str, Any] = {"meta": meta}
    runner = Runner(results)
    try:
        measure(runner)
    except Exception:
        traceback.print_exc()
        runner.crashed = True
        results["setup"] = {"crashed": traceback.format_exc(limit=3)}
    results["meta"]["seconds"] = time.perf_counter() - started
    results["meta"]["load_average_after"] = os.getloadavg()[0]
    report.write_json(results, path)
    print(render(results))
    print(f"\nResults written to {path.relative_to(ROOT)}")
    return results, runner


def main() -> int:
    meta = {**machine_meta(raise_fd_limit()), "smooth_output": MAIN_SMOOTH_OUTPUT}
    _, runner = run_and_report(meta, measure_all, report.render, RESULTS)
    return 1 if runner.crashed else 0

