"""The fault cases: each sends a few requests into one upstream fault and records what the
client saw, then checks that the gateway's worker survived.

A case is `ok` unless a request hung beyond the bound, got no HTTP response, got an error
body (or stream event) that is not JSON, or a 200 non-stream body with an error; or the
worker died, was replaced, or no longer answers a normal request afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import gevent

from bench.faults.gateways import Gateway, log_summary
from bench.faults.probe import PROBE_TEXT, Outcome, chat_request, send
from bench.targets import MODEL
from dify_emulator.control import EmulatorProcess

# An app of the emulator whose every answer starts with one ~2 MB event (see run.py); it
# needs no 2 MB prompt, which the gateway would refuse (MAX_PROMPT_CHARS).
BIG_EVENT_MODEL = "bench-big-event"
BIG_EVENT_BYTES = 2 * 1024 * 1024


def big_event() -> str:
    """One Dify `message` event of about BIG_EVENT_BYTES: answer text in words."""
    words = "lorem ipsum dolor sit amet " * (BIG_EVENT_BYTES // 27)
    return 'data: {"event":"message","answer":"' + words + '"}\n\n'


@dataclass(frozen=True)
class Case:
    name: str
    gateway: str  # which gateway serves it: see run.py
    directive: dict[str, Any] = field(default_factory=dict)
    model: str = MODEL


CASES = [
    Case("connection refused", "refused", {"tokens": 3}),
    Case("DNS failure (.invalid)", "dns", {"tokens": 3}),
    Case("reset before headers", "main", {"tokens": 5, "reset_before_headers": True}),
    Case("reset mid-stream", "main", {"tokens": 5, "reset_after": 2}),
    Case("stall mid-stream, TIMEOUT=2", "timeout", {"tokens": 5, "stall_after": 2}),
    Case("HTML 502 page", "main", {"http_error": "html_502"}),
    Case("HTML 429 page", "main", {"http_error": "html_429"}),
    Case("HTML 404 page", "main", {"http_error": "html_404"}),
    Case("SSE: data line not JSON", "main", {"tokens": 3, "raw_before": ["data: not json\n\n"]}),
    Case("SSE: event: foo", "main", {"tokens": 3, "raw_before": ["event: foo\n\n"]}),
    Case("SSE: unknown event", "main", {"tokens": 3, "raw_before": ['data: {"event":"surprise"}\n\n']}),
    Case("SSE: one 2 MB event", "main", {}, BIG_EVENT_MODEL),
    Case("closed without message_end", "main", {"tokens": 5, "close_after": 2}),
]


def dify_calls(emulator: EmulatorProcess) -> dict[str, int]:
    """The generation calls of the case's requests that reached the emulator, and its stop calls."""
    calls = [record for record in emulator.requests() if record["path"].endswith("/chat-messages")
             and PROBE_TEXT in str((record.get("json") or {}).get("query"))]
    return {"calls": len(calls), "stops": len(emulator.stops())}


def run_case(case: Case, gateway: Gateway, emulator: EmulatorProcess | None, streams: int, bodies: int,
             bound: float) -> dict[str, Any]:
    """`streams` streaming and `bodies` non-streaming requests at once, then the health check.

    With an `emulator` (the gateway's Dify), its records show what reached Dify.
    """
    gateway.new_log_lines()  # only what this case makes the gateway log
    if emulator is not None:
        emulator.reset()
    modes = [True] * streams + [False] * bodies
    jobs = [gevent.spawn(send, gateway.root_url, chat_request(gateway.base_url, case.directive, stream, case.model),
                         stream, bound) for stream in modes]
    gevent.joinall(jobs)
    outcomes: list[Outcome] = [job.value for job in jobs]
    health = gateway.health(bound)  # also gives the background stop calls time to arrive
    log = gateway.new_log_lines()
    dify = dify_calls(emulator) if emulator is not None else None
    problems = [outcome.problem for outcome in outcomes if outcome.problem]
    if not health["same_worker"]:
        problems.append(f"worker {gateway.worker} replaced or gone: workers now {health['workers']}")
    if not health["answers"]:
        problems.append(f"no normal answer afterwards ({health['check']}: {health['answer']})")
    return {
        "case": case.name,
        "gateway": gateway.name,
        "directive": _short(case.directive),
        "model": case.model,
        "streaming": _summary([o for o in outcomes if o.stream]),
        "non_streaming": _summary([o for o in outcomes if not o.stream]),
        "dify": f"{dify['calls']} + {dify['stops']} stop" if dify else "-",
        "dify_calls": dify,
        "after": _after(health),
        "log": log_summary(log),
        "verdict": "FAIL" if problems else "ok",
        "problems": problems,
        "health": health,
        "requests": [outcome.as_dict() for outcome in outcomes],
        "log_lines": [line[:300] for line in log[:10]],
    }


def _after(health: dict[str, Any]) -> str:
    if not health["same_worker"]:
        return "REPLACED" if health["workers"] else "GONE"
    return "ok" if health["answers"] else "NO ANSWER"


def _summary(outcomes: list[Outcome]) -> str:
    """The outcome of the requests, once when they all agree."""
    seen = list(dict.fromkeys(outcome.summary() for outcome in outcomes))
    return " | ".join(seen)


def _short(directive: dict[str, Any]) -> dict[str, Any]:
    return {key: (value if len(repr(value)) < 200 else f"<{len(repr(value)):,} characters>")
            for key, value in directive.items()}


def run_all(starters: dict[str, Callable[[], AbstractContextManager[Gateway]]], emulator: EmulatorProcess,
            streams: int, bodies: int, bound: float) -> dict[str, Any]:
    """Every case, grouped by gateway: each gateway's starter gives it (as a context that
    stops it again, when it was started for the cases); one that cannot start fails its cases."""
    rows: dict[str, dict[str, Any]] = {}
    for name, starter in starters.items():
        group = [case for case in CASES if case.gateway == name]
        if not group:
            continue
        try:
            context = starter()
        except Exception as exc:
            for case in group:
                rows[case.name] = {"case": case.name, "gateway": name, "verdict": "FAIL",
                                   "problems": [f"the gateway did not start: {exc}"[:300]],
                                   "streaming": "-", "non_streaming": "-", "dify": "-", "after": "-",
                                   "log": "-"}
            continue
        with context as gateway:
            for case in group:
                rows[case.name] = run_case(case, gateway, emulator if gateway.has_dify else None, streams,
                                           bodies, bound)
    return {"streams_per_case": streams, "bodies_per_case": bodies, "request_bound_s": bound,
            "cases": [rows[case.name] for case in CASES if case.name in rows]}
