"""Start the emulator as a subprocess and talk to its `/_emulator/` control endpoints.

Used by the gateway's tests and benchmarks:

    with start_emulator(apps=[...]) as dify:
        client = Gateway(dify_base_url=dify.base_url)
        ...
        assert dify.streams()["active"] == 0
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY = re.compile(r"Dify emulator listening on http://(\S+):(\d+)/v1")


class EmulatorProcess:
    """A running emulator process; `stop()` (or leaving the `with` block) ends it."""

    def __init__(self, process: subprocess.Popen[str], host: str, apps_file: str | None) -> None:
        self.process = process
        self.host = host
        self.port: int | None = None
        self._apps_file = apps_file
        self._output: collections.deque[str] = collections.deque(maxlen=400)
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="dify-emulator-output", daemon=True)
        self._reader.start()

    # -- lifecycle -------------------------------------------------------------------------

    def _drain(self) -> None:
        """Keep reading the process output (so its pipe never fills) and spot the ready line."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._output.append(line.rstrip("\n"))
            match = _READY.search(line)
            if match and not self._ready.is_set():
                self.port = int(match.group(2))
                self._ready.set()

    def output(self) -> str:
        """The last lines the process printed (stdout and stderr)."""
        return "\n".join(self._output)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(1)
                raise RuntimeError(f"Dify emulator exited with {self.process.returncode}:\n{self.output()}")
            if self._ready.is_set():
                try:
                    if requests.get(self.base_url + "/", timeout=1).status_code == 200:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Dify emulator not ready after {timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Quick shutdown (SIGINT to gunicorn's master, by pid), then kill if it lingers."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._reader.join(2)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._apps_file:
            Path(self._apps_file).unlink(missing_ok=True)
            self._apps_file = None

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The Dify API base URL, e.g. http://127.0.0.1:PORT/v1."""
        return self.root_url + "/v1"

    # -- control endpoints -------------------------------------------------------------

    def _get(self, path: str) -> Any:
        response = requests.get(self.root_url + "/_emulator/" + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def requests(self) -> list[dict[str, Any]]:
        """Every Dify API request received, oldest first."""
        return self._get("requests")["data"]

    def stops(self) -> list[dict[str, Any]]:
        """Every stop call: path, task_id, user, app_key, time."""
        return self._get("stops")["data"]

    def streams(self) -> dict[str, Any]:
        """{"active", "started", "finished", "active_tasks"}."""
        return self._get("streams")

    def reset(self) -> None:
        """Clear recorded requests, stops and stream counters (conversations and files stay)."""
        requests.post(self.root_url + "/_emulator/reset", timeout=10).raise_for_status()


def start_emulator(
    port: int | None = None,
    apps: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    workers: int = 1,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
) -> EmulatorProcess:
    """Start `python -m dify_emulator` and wait until `GET /v1/` answers.

    Without `port` the emulator binds port 0 and reports the port it got, so
    parallel test runs never collide. `apps` replaces the demo apps.
    """
    apps_file = None
    command = [sys.executable, "-m", "dify_emulator", "--host", host, "--port", str(port or 0)]
    command += ["--workers", str(workers)]
    if apps is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="dify-emulator-apps-", delete=False) as handle:
            json.dump(apps, handle)
        apps_file = handle.name
        command += ["--apps", apps_file]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    emulator = EmulatorProcess(process, host, apps_file)
    emulator.wait_ready(timeout)
    return emulator
