"""The measurements of bench/README.md. Each returns a flat dict of figures (JSON-ready); none asserts anything.

`Side` bundles what a measurement needs about one running process: the target to send
traffic to and the pid whose CPU and memory are read (the gunicorn *worker*, not the master).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from bench import procstat
from bench.http import build_request
from bench.load import (
    Batch,
    HeldStreams,
    Timeline,
    alternate,
    read_body,
    read_stream,
    read_timeline,
    run_batch,
    staggered,
)
from bench.targets import Target

SHORT = {"tokens": 20}


@dataclass
class Side:
    target: Target
    pid: int


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 300 values is the 297th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def _errors(batch: Batch) -> dict[str, Any]:
    return {"errors": batch.errors, "error_samples": batch.error_samples}


@dataclass
class Metered:
    """A batch of requests and the CPU each process spent while it ran."""

    batch: Batch
    cpu: dict[str, procstat.CpuMeter]  # by role: "gateway", "emulator"
    client_seconds: float  # this process: the load client itself

    def ms_per_request(self, role: str) -> float:
        return self.cpu[role].seconds * 1000 / max(1, len(self.batch.values))

    def client_ms_per_request(self) -> float:
        return self.client_seconds * 1000 / max(1, len(self.batch.values))

    @staticmethod
    def combine(runs: list[Metered]) -> Metered:
        """Several runs of the same traffic as one: times, CPU and results added up."""
        batch = Batch(seconds=sum(run.batch.seconds for run in runs))
        for run in runs:
            batch.errors += run.batch.errors
            batch.values += run.batch.values
            batch.error_samples += run.batch.error_samples[:5 - len(batch.error_samples)]
        cpu = {}
        for role in runs[0].cpu:
            cpu[role] = procstat.CpuMeter(runs[0].cpu[role].pid)
            cpu[role].user = sum(run.cpu[role].user for run in runs)
            cpu[role].system = sum(run.cpu[role].system for run in runs)
        return Metered(batch, cpu, sum(run.client_seconds for run in runs))


def metered(pids: dict[str, int], run: Callable[[], Batch]) -> Metered:
    meters = {role: procstat.CpuMeter(pid).start() for role, pid in pids.items()}
    client = procstat.own_cpu_seconds()
    batch = run()
    client = procstat.own_cpu_seconds() - client
    for meter in meters.values():
        meter.stop()
    return Metered(batch, meters, client)


def throughput(direct: Side, gateway: Side, requests: int, concurrency: int, rounds: int = 4) -> dict[str, Any]:
    """1. Non-streaming requests/s through the gateway vs the equivalent direct streaming call.

    The requests are split into `rounds` that alternate direct and gateway, so a change in
    the machine's background load during the run affects both sides alike.
    """
    direct_raw = direct.target.request(SHORT, stream=True)
    gateway_raw = gateway.target.request(SHORT, stream=False)
    read_direct = read_stream(direct.target.content_marker)
    read_gateway = read_body(b"w20 ")
    warmup = max(concurrency * 4, 50)
    run_batch(direct.target, direct_raw, warmup, concurrency, read_direct)
    run_batch(gateway.target, gateway_raw, warmup, concurrency, read_gateway)

    per_round = requests // rounds
    plain_runs, relayed_runs = [], []
    for _ in range(rounds):
        plain_runs.append(metered({"emulator": direct.pid}, lambda: run_batch(
            direct.target, direct_raw, per_round, concurrency, read_direct)))
        relayed_runs.append(metered({"gateway": gateway.pid, "emulator": direct.pid}, lambda: run_batch(
            gateway.target, gateway_raw, per_round, concurrency, read_gateway)))
    plain, relayed = Metered.combine(plain_runs), Metered.combine(relayed_runs)
    # The floor under the gateway's figure: the same server stack (gunicorn, Flask, the edge
    # hooks) answering its smallest endpoint, with no Dify call.
    target = gateway.target
    health_raw = build_request("GET", target.host, target.port, "/healthz", {}, b"")
    health = metered({"gateway": gateway.pid}, lambda: run_batch(target, health_raw, requests, concurrency,
                                                                   read_body(b"ok")))
    direct_rps = len(plain.batch.values) / plain.batch.seconds
    gateway_rps = len(relayed.batch.values) / relayed.batch.seconds
    return {
        "requests": per_round * rounds,
        "concurrency": concurrency,
        "rounds": rounds,
        "direct_rps": direct_rps,
        "gateway_rps": gateway_rps,
        "ratio": gateway_rps / direct_rps if direct_rps else math.nan,
        "gateway_cpu_ms_per_request": relayed.ms_per_request("gateway"),
        "gateway_cpu_system_share": relayed.cpu["gateway"].system_share,
        "gateway_healthz_cpu_ms_per_request": health.ms_per_request("gateway"),
        "emulator_cpu_ms_per_request_direct": plain.ms_per_request("emulator"),
        "emulator_cpu_ms_per_request_via_gateway": relayed.ms_per_request("emulator"),
        "client_cpu_ms_per_request_direct": plain.client_ms_per_request(),
        "client_cpu_ms_per_request_via_gateway": relayed.client_ms_per_request(),
        "direct": _errors(plain.batch),
        "gateway": _errors(relayed.batch),
        "healthz": _errors(health.batch),
    }


def first_byte(direct: Side, gateway: Side, requests: int) -> dict[str, Any]:
    """2. Time to the first content event, sequential, direct and via the gateway in turn."""
    targets = [direct.target, gateway.target]
    raws = [target.request(SHORT, stream=True) for target in targets]

    def reader(target: Target):
        return read_stream(target.content_marker)

    alternate(targets, raws, 20, reader)  # warm-up: connections, first-call caches
    direct_batch, gateway_batch = alternate(targets, raws, requests, reader)
    figures: dict[str, Any] = {"requests": requests}
    for name, batch in (("direct", direct_batch), ("gateway", gateway_batch)):
        ttfbs = [result.ttfb * 1000 for result in batch.values]
        figures[f"{name}_p50_ms"] = percentile(ttfbs, 50)
        figures[f"{name}_p99_ms"] = percentile(ttfbs, 99)
        figures[name] = _errors(batch)
    figures["added_p50_ms"] = figures["gateway_p50_ms"] - figures["direct_p50_ms"]
    figures["added_p99_ms"] = figures["gateway_p99_ms"] - figures["direct_p99_ms"]
    return figures


def _stream_events(side: Side, directive: dict[str, Any], streams: int) -> tuple[Batch, procstat.CpuMeter]:
    """`streams` concurrent streams, and the CPU the side's process spent on them."""
    raw = side.target.request(directive, stream=True)
    run = metered({"side": side.pid},
                  lambda: run_batch(side.target, raw, streams, streams, read_stream(side.target.content_marker)))
    return run.batch, run.cpu["side"]


def relay_cost(direct: Side, gateway: Side, tokens: int, streams: int, paced_streams: int,
               paced_tokens: int, paced_delay_ms: float) -> dict[str, Any]:
    """3. Gateway CPU per relayed content event, and events/s.

    "burst": a few long streams sent as fast as the emulator can, so events reach the
    gateway many per network read. "paced": many concurrent streams with a pause between
    events, so most events arrive alone and pay the full per-write cost.
    """
    burst = {"tokens": tokens}
    direct_batch, _ = _stream_events(direct, burst, streams)
    gateway_batch, gateway_cpu = _stream_events(gateway, burst, streams)
    paced = {"tokens": paced_tokens, "delay_ms": paced_delay_ms}
    paced_batch, paced_cpu = _stream_events(gateway, paced, paced_streams)

    def events(batch: Batch) -> int:
        return sum(result.events for result in batch.values)

    expected = tokens * streams
    return {
        "streams": streams,
        "tokens_per_stream": tokens,
        "direct_events_per_s": events(direct_batch) / direct_batch.seconds,
        "gateway_events_per_s": events(gateway_batch) / gateway_batch.seconds,
        "gateway_cpu_us_per_event": gateway_cpu.seconds * 1e6 / max(1, events(gateway_batch)),
        "gateway_cpu_system_share": gateway_cpu.system_share,
        "gateway_events_missing": expected - events(gateway_batch),
        "paced_streams": paced_streams,
        "paced_tokens_per_stream": paced_tokens,
        "paced_delay_ms": paced_delay_ms,
        "paced_events_per_s": events(paced_batch) / paced_batch.seconds,
        "paced_cpu_us_per_event": paced_cpu.seconds * 1e6 / max(1, events(paced_batch)),
        "paced_cpu_system_share": paced_cpu.system_share,
        "paced_events_missing": paced_tokens * paced_streams - events(paced_batch),
        "direct": _errors(direct_batch),
        "gateway": _errors(gateway_batch),
        "paced": _errors(paced_batch),
    }


def responses_next_to_chat(chat: Side, responses: Side, tokens: int, streams: int, rounds: int,
                           requests: int) -> dict[str, Any]:
    """7. A Responses API stream next to a chat stream, on the same gateway: CPU per relayed
    token (back-to-back streams, as figure 3, in `rounds` that alternate the two, so a change in
    the machine's load affects both alike) and the time to the first token (sequential streams
    taken in turn, as figure 2)."""
    burst = {"tokens": tokens}
    sides = {"chat": chat, "responses": responses}
    cpu_seconds = {"chat": 0.0, "responses": 0.0}
    events = {"chat": 0, "responses": 0}
    failures = {"chat": 0, "responses": 0}  # failed streams plus tokens that never arrived
    for side in sides.values():
        _stream_events(side, SHORT, 10)  # warm-up
    for _ in range(rounds):
        for name, side in sides.items():
            batch, meter = _stream_events(side, burst, streams)
            relayed = sum(result.events for result in batch.values)
            cpu_seconds[name] += meter.seconds
            events[name] += relayed
            failures[name] += batch.errors + tokens * streams - relayed
    cpu = {name: cpu_seconds[name] * 1e6 / max(1, events[name]) for name in sides}
    targets = [chat.target, responses.target]
    raws = [target.request(SHORT, stream=True) for target in targets]

    def reader(target: Target):
        return read_stream(target.content_marker)

    alternate(targets, raws, 20, reader)
    chat_firsts, responses_firsts = alternate(targets, raws, requests, reader)
    figures: dict[str, Any] = {"streams": streams, "tokens_per_stream": tokens, "rounds": rounds, "requests": requests,
                               "chat_cpu_us_per_token": cpu["chat"], "responses_cpu_us_per_token": cpu["responses"],
                               "cpu_ratio": cpu["responses"] / cpu["chat"] if cpu["chat"] else math.nan}
    for name, batch in (("chat", chat_firsts), ("responses", responses_firsts)):
        figures[f"{name}_first_p50_ms"] = percentile([result.ttfb * 1000 for result in batch.values], 50)
        figures[f"{name}_errors"] = batch.errors + failures[name]
    figures["first_added_ms"] = figures["responses_first_p50_ms"] - figures["chat_first_p50_ms"]
    return figures


def metrics_on_and_off(off: Side, on: Side, requests: int, concurrency: int, rounds: int,
                       scrapes: int) -> dict[str, Any]:
    """9. What metrics cost: gateway CPU per non-streaming request on two fresh gateways that
    differ only in METRICS, in `rounds` that alternate them, and the CPU of one scrape of
    GET /metrics once they have served the same traffic."""
    raw = off.target.request(SHORT, stream=False)
    read = read_body(b"w20 ")
    sides = {"off": off, "on": on}
    for side in sides.values():
        run_batch(side.target, raw, max(concurrency * 4, 50), concurrency, read)  # warm-up
    runs: dict[str, list[Metered]] = {"off": [], "on": []}
    for _ in range(rounds):
        for name, side in sides.items():
            runs[name].append(metered({"gateway": side.pid}, lambda side=side: run_batch(
                side.target, raw, requests // rounds, concurrency, read)))
    combined = {name: Metered.combine(side_runs) for name, side_runs in runs.items()}
    target = on.target
    auth = {"Authorization": f"Bearer {target.api_key}"}
    scrape_raw = build_request("GET", target.host, target.port, "/metrics", auth, b"")
    scraped = metered({"gateway": on.pid}, lambda: run_batch(target, scrape_raw, scrapes, 1,
                                                             read_body(b"opendify_requests_total")))
    figures: dict[str, Any] = {"requests": requests // rounds * rounds, "concurrency": concurrency, "rounds": rounds,
                               "scrapes": scrapes}
    for name, run in combined.items():
        figures[f"{name}_cpu_ms_per_request"] = run.ms_per_request("gateway")
        figures[name] = _errors(run.batch)
    figures["added_cpu_ms_per_request"] = figures["on_cpu_ms_per_request"] - figures["off_cpu_ms_per_request"]
    figures["ratio"] = figures["on_cpu_ms_per_request"] / figures["off_cpu_ms_per_request"]
    figures["scrape_cpu_ms"] = scraped.ms_per_request("gateway")
    figures["scrape"] = _errors(scraped.batch)
    return figures


def memory_per_stream(gateway: Side, streams: int, directive: dict[str, Any],
                      per_second: float | None = None) -> dict[str, Any]:
    """4. Gateway worker RSS growth while `streams` slow streams are held, per stream; the
    streams open `per_second`, or all at once."""
    warm = run_batch(gateway.target, gateway.target.request(SHORT), 50, 10, read_stream(gateway.target.content_marker))
    gevent.sleep(0.5)
    before = procstat.rss_kib(gateway.pid)
    held = HeldStreams(gateway.target, gateway.target.request(directive), streams)
    try:
        open_seconds = held.open(timeout=60, per_second=per_second)
        gevent.sleep(1.0)  # let every stream settle into its idle state
        during = 0
        for _ in range(3):  # the highest of a few samples: RSS moves a little as the loop runs
            during = max(during, procstat.rss_kib(gateway.pid))
            gevent.sleep(0.1)
    finally:
        held.close()
    return {
        "streams": streams,
        "per_second": per_second,
        "held": held.held,
        "open_seconds": open_seconds,
        "rss_before_kib": before,
        "rss_held_kib": during,
        "kib_per_stream": (during - before) / streams,
        "errors": held.errors + warm.errors,
        "error_samples": held.batch.error_samples + warm.error_samples,
    }


def _active(streams_of_emulator: Callable[[], dict[str, Any]]) -> int | None:
    try:
        return streams_of_emulator()["active"]
    except Exception:  # the emulator's control call can time out while its connection pool is full
        return None


def wait_released(streams_of_emulator: Callable[[], dict[str, Any]], timeout: float) -> tuple[float, int | None]:
    """Seconds until the emulator has no active stream (polled), and the count left at the end.

    The emulator serves at most 1,000 connections at once (gunicorn's default), so while
    1,000 streams are open its control endpoint only answers once some of them ended.
    """
    started = time.perf_counter()
    active = _active(streams_of_emulator)
    while active != 0 and time.perf_counter() - started < timeout:
        gevent.sleep(0.05)
        active = _active(streams_of_emulator)
    return time.perf_counter() - started, active


def held_streams(gateway: Side, streams: int, directive: dict[str, Any], hold_seconds: float,
                 emulator_streams: Callable[[], dict[str, Any]], release_timeout: float) -> dict[str, Any]:
    """5. Many streams held on one worker: errors, then how fast the emulator's streams end."""
    before = procstat.rss_kib(gateway.pid)
    held = HeldStreams(gateway.target, gateway.target.request(directive), streams)
    try:
        open_seconds = held.open(timeout=90)
        gevent.sleep(hold_seconds)
        during = procstat.rss_kib(gateway.pid)
    finally:
        held.close()
    release_seconds, left = wait_released(emulator_streams, release_timeout)
    try:
        snapshot = emulator_streams()
    except Exception:
        snapshot = {"started": None, "finished": None}
    return {
        "streams": streams,
        "held": held.held,
        "open_seconds": open_seconds,
        "hold_seconds": hold_seconds,
        "chunks_read_while_held": held.chunks,
        "errors": held.errors,
        "error_samples": held.batch.error_samples,
        "rss_before_kib": before,
        "rss_held_kib": during,
        "release_seconds": release_seconds,
        "released": left == 0,
        "active_after": left,
        "emulator_started": snapshot["started"],
        "emulator_finished": snapshot["finished"],
    }


def streams_at_scale(target: Target, workers: list[int], streams: int, per_second: float, hold_seconds: float,
                     upstream_streams: Callable[[], dict[str, Any]], release_timeout: float) -> dict[str, Any]:
    """8. `streams` streams that Dify never ends, held on a gateway with the default settings
    (over all its `workers`): opened `per_second`, held `hold_seconds`, then closed by the
    client. What the workers spend on each held stream (memory, open files, CPU while Dify only
    pings), the time to the first content event while the streams ramp up, and how soon Dify's
    streams end after the close (`upstream_streams`: Dify's count of open streams)."""
    raw = target.request({"never_end": True})
    warm = HeldStreams(target, raw, 100)  # first calls, pools, allocator: not what a stream costs
    warm.open(timeout=30)
    warm.close()
    gevent.sleep(1.0)
    rss_before = sum(procstat.rss_kib(pid) for pid in workers)
    fds_before = [procstat.fd_count(pid) for pid in workers]
    held = HeldStreams(target, raw, streams)
    try:
        open_seconds = held.open(timeout=streams / per_second + 60, per_second=per_second)
        gevent.sleep(1.0)  # let every stream settle into its idle state
        meters = [procstat.CpuMeter(pid).start() for pid in workers]
        gevent.sleep(hold_seconds)
        cpu_seconds = sum(meter.stop() for meter in meters)
        rss_held = sum(procstat.rss_kib(pid) for pid in workers)
        fds_held = [procstat.fd_count(pid) for pid in workers]
    finally:
        held.close()
    release_seconds, left = wait_released(upstream_streams, release_timeout)
    first_events = [seconds * 1000 for seconds in held.first_events]
    counted = max(1, held.held)  # per held stream: refused ones cost next to nothing
    return {
        "streams": streams,
        "workers": len(workers),
        "worker_open_files": [procstat.open_files_limit(pid) for pid in workers],
        "per_second": per_second,
        "held": held.held,
        "open_seconds": open_seconds,
        "hold_seconds": hold_seconds,
        "errors": held.errors + warm.errors,
        "error_samples": held.batch.error_samples + warm.batch.error_samples,
        "first_event_p50_ms": percentile(first_events, 50),
        "first_event_p99_ms": percentile(first_events, 99),
        "rss_before_kib": rss_before,
        "rss_held_kib": rss_held,
        "kib_per_stream": (rss_held - rss_before) / counted,
        "fds_per_stream": (sum(fds_held) - sum(fds_before)) / counted,
        # Two open files a stream: how the streams were shared out between the workers.
        "streams_per_worker": [(after - before) // 2 for after, before in zip(fds_held, fds_before, strict=True)],
        "cpu_us_per_stream_second": cpu_seconds * 1e6 / counted / hold_seconds,
        "release_seconds": release_seconds,
        "released": left == 0,
        "active_after": left,
    }


def _on_and_off(off: Side, on: Side, directive: dict[str, Any], streams: int, rounds: int,
                gap_after: float) -> dict[str, Any]:
    """`streams` concurrent streams on each gateway, both at once (the same conditions for
    both), in `rounds`; what the client saw of each side, and how late the paced ends were.

    The streams of a side start spread over one pause of the directive, as independent users
    would: started together, every gateway would get all their events at the same moment and
    relay the last of them tens of milliseconds late. A paced stream's end delay is its
    duration (sending -> [DONE]) minus the median duration of the unpaced streams of its round;
    the unpaced streams' own lateness against that median shows the noise. `gap_after` is where
    the largest gap starts counting (see `Timeline.largest_gap`).
    """
    spacing = directive["delay_ms"] / 1000 / streams
    sides = {"off": off, "on": on}
    read = read_timeline(off.target.content_marker)
    timelines: dict[str, list[Timeline]] = {"off": [], "on": []}
    batches = {"off": Batch(), "on": Batch()}  # errors only
    cpu = {"off": 0.0, "on": 0.0}
    late: dict[str, list[float]] = {"off": [], "on": []}  # seconds after the round's unpaced median
    for _ in range(rounds):
        meters = {name: procstat.CpuMeter(side.pid).start() for name, side in sides.items()}
        runs = {name: gevent.spawn(staggered, side.target, side.target.request(directive), streams, spacing, read)
                for name, side in sides.items()}
        gevent.joinall(list(runs.values()), raise_error=True)
        unpaced = percentile([timeline.seconds for timeline in runs["off"].value.values], 50)
        for name, run in runs.items():
            cpu[name] += meters[name].stop()
            batch: Batch = run.value
            batches[name].errors += batch.errors
            batches[name].error_samples += batch.error_samples[:5 - len(batches[name].error_samples)]
            timelines[name] += batch.values
            late[name] += [timeline.seconds - unpaced for timeline in batch.values]

    figures: dict[str, Any] = {"directive": directive, "streams": streams, "rounds": rounds}
    for name, lines in timelines.items():
        count = max(1, len(lines))
        gaps = [gap for gap in (line.largest_gap(gap_after) for line in lines) if not math.isnan(gap)]
        figures[f"{name}_seconds"] = sum(line.seconds for line in lines) / count if lines else math.nan
        figures[f"{name}_writes_per_stream"] = sum(len(line.writes) for line in lines) / count
        figures[f"{name}_largest_gap_p50_ms"] = percentile(gaps, 50) * 1000
        figures[f"{name}_largest_gap_max_ms"] = max(gaps, default=math.nan) * 1000
        figures[f"{name}_late_p50_ms"] = percentile(late[name], 50) * 1000
        figures[f"{name}_late_max_ms"] = max(late[name], default=math.nan) * 1000
        figures[f"{name}_cpu_ms_per_stream"] = cpu[name] * 1000 / count
        figures[name] = _errors(batches[name])
    figures["ratio"] = figures["on_seconds"] / figures["off_seconds"]
    figures["added_ms"] = (figures["on_seconds"] - figures["off_seconds"]) * 1000
    return figures


def smooth_output(off: Side, on: Side, bursty: dict[str, Any], steady: dict[str, Any], streams: int,
                  rounds: int, steady_rounds: int) -> dict[str, Any]:
    """6. The smooth-output pacer: a gateway with it on against one with it off (both fresh:
    the main gateway's heap after figure 5's 1,000 streams would slow the "off" side).

    "bursty": Dify sends bursts (`burst` events per write, `delay_ms` apart), which the pacer
    spreads; gaps count from half a burst interval after the first write, since the first
    burst goes out at once and the wait for the second cannot be known in advance. "steady":
    Dify sends one event every `delay_ms`, which the pacer must pass on untouched.
    """
    warm = Batch()
    for side in (off, on):
        warm.errors += run_batch(side.target, side.target.request(SHORT), 20, 5,
                                 read_stream(side.target.content_marker)).errors
    return {
        "bursty": _on_and_off(off, on, bursty, streams, rounds, gap_after=bursty["delay_ms"] / 2000),
        "steady": _on_and_off(off, on, steady, streams, steady_rounds, gap_after=steady["delay_ms"] / 2000),
        "warmup": _errors(warm),
    }
