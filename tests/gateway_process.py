"""Starting the real gateway (gunicorn, gevent worker) on a free port, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GatewayProcess:
    """`gunicorn -c gunicorn.conf.py openai_to_dify:app` with the given environment."""

    def __init__(self, env: dict[str, str], ready_path: str = "/readyz", timeout: float = 30.0) -> None:
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + "/v1"
        handle, log_path = tempfile.mkstemp(prefix="opendify-gateway-", suffix=".log")
        os.close(handle)
        self.log_path = Path(log_path)
        full_env = {
            **os.environ,
            "OPENDIFY_ENV_FILE": os.devnull,  # a developer's .env must not change the tests
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": str(self.port),
            "WORKERS": "1",
            "ACCESS_LOG": "",
            "GRACEFUL_TIMEOUT": "5",
            **env,
        }
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "openai_to_dify:app"],
                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.process.pid
        self._wait_ready(ready_path, timeout)

    def _wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(self.root_url + path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        output = self.output()
        self.stop()
        raise RuntimeError(f"the gateway was not ready within {timeout} s:\n{output}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
