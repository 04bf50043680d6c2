"""`python -m dify_emulator`: serve the emulator with gunicorn's gevent worker.

State lives in each worker process, so tests and benchmarks use one worker
(the default); more workers only make sense for stateless load tests.
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

from gunicorn.app.base import BaseApplication

from .apps import build_apps


class EmulatorServer(BaseApplication):
    """gunicorn configured in code: no config file is read, the app is built in each worker."""

    def __init__(self, options: dict[str, Any], apps: list[dict[str, Any]] | None) -> None:
        self.options = options
        self.apps = apps
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        return create_app(self.apps)


def _announce(server: Any) -> None:
    """gunicorn `when_ready` hook: report the bound address (the real port when --port 0)."""
    host = server.cfg.bind[0].rsplit(":", 1)[0]
    port = server.LISTENERS[0].sock.getsockname()[1]
    print(f"Dify emulator listening on http://{host}:{port}/v1", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dify_emulator", description="Fake Dify service API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001, help="0 picks a free port (printed when ready)")
    parser.add_argument("--apps", metavar="FILE.json", help="JSON list of app configs (default: the demo apps)")
    parser.add_argument("--workers", type=int, default=1, help="state is per worker: keep 1 for tests")
    return parser.parse_args(argv)


def _raise_fd_limit() -> None:
    """Every open stream is a socket: lift the soft file limit to the hard one (capped)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _raise_fd_limit()
    apps = None
    if args.apps:
        with open(args.apps, encoding="utf-8") as handle:
            apps = json.load(handle)
        try:
            build_apps(apps)  # fail here with a clear message, not in a booting worker
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"dify_emulator: bad --apps file {args.apps}: {exc}") from None
    options = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        "worker_class": "gevent",
        # The gevent worker heartbeats from its own loop, so long streams are safe;
        # the timeout only catches a worker whose loop is blocked.
        "timeout": 120,
        "graceful_timeout": 5,
        "keepalive": 5,
        # Benchmarks hold thousands of streams; gunicorn's default (1000) would queue the rest.
        "worker_connections": 10000,
        "loglevel": "warning",
        "accesslog": None,
        "errorlog": "-",
        "when_ready": _announce,
    }
    EmulatorServer(options, apps).run()


if __name__ == "__main__":
    main()
