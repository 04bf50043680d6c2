"""The gateways of the fault report, and the checks run on them after each case.

Each is `tests.gateway_process.GatewayProcess` (gunicorn, one gevent worker) with the main
benchmark's settings plus its own. After a case the gateway must still have the same worker
process (no crash, no restart by gunicorn) and that worker must answer a normal request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procstat
from bench.faults.probe import chat_request, get_request, send
from bench.run import GATEWAY_ENV, only_worker
from tests.gateway_process import GatewayProcess

# A normal request after a case: a short non-streaming answer.
NORMAL_DIRECTIVE = {"tokens": 3}


@dataclass
class Gateway:
    name: str
    process: GatewayProcess
    worker: int
    # True when it talks to the emulator: a chat request must then succeed. A gateway with
    # no reachable Dify can only show it is alive (GET /healthz).
    has_dify: bool
    _log_offset: int = field(default=0, repr=False)

    @property
    def root_url(self) -> str:
        return self.process.root_url

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def workers(self) -> list[int]:
        return procstat.children(self.process.pid)

    def health(self, bound: float) -> dict[str, Any]:
        """Same worker, still alive, and it answers a normal request.

        A replaced worker is reported once: the next check compares with its replacement.
        """
        workers = self.workers()
        same = workers == [self.worker] and Path(f"/proc/{self.worker}").exists()
        if not same and len(workers) == 1:
            self.worker = workers[0]
        if self.has_dify:
            raw = chat_request(self.base_url, NORMAL_DIRECTIVE, False, text="Health check.")
            outcome = send(self.root_url, raw, False, bound)
            answers = outcome.status == 200 and outcome.text_chars > 0 and outcome.problem is None
            check = "chat"
        else:
            outcome = send(self.root_url, get_request(self.root_url, "/healthz"), False, bound)
            answers = outcome.status == 200
            check = "healthz"
        return {"same_worker": same, "workers": workers, "answers": answers, "check": check,
                "answer": outcome.summary()}

    def new_log_lines(self) -> list[str]:
        """What the gateway logged since the last call (it logs at WARNING and above)."""
        text = self.process.output()
        lines = text[self._log_offset:].splitlines()
        self._log_offset = len(text)
        return [line for line in lines if line.strip()]

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(name: str, env: dict[str, str], has_dify: bool) -> Gateway:
    """A gateway with one worker; ready once it knows its apps, or (no Dify) once it is up."""
    process = GatewayProcess({**GATEWAY_ENV, "GRACEFUL_TIMEOUT": "1", **env},
                             ready_path="/readyz" if has_dify else "/healthz")
    try:
        return Gateway(name, process, only_worker(process.pid), has_dify)
    except BaseException:
        process.stop()
        raise


def log_summary(lines: list[str]) -> str:
    """`-`, or how many warnings and errors, and whether a traceback is among them."""
    if not lines:
        return "-"
    errors = sum(1 for line in lines if "ERROR" in line or "CRITICAL" in line)
    warnings = sum(1 for line in lines if "WARNING" in line)
    parts = [f"{count} {kind}" for count, kind in ((errors, "err"), (warnings, "warn")) if count]
    if any(line.startswith("Traceback") for line in lines):
        parts.append("traceback")
    return ", ".join(parts) or f"{len(lines)} lines"
