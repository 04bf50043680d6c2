"""OpenDify: OpenAI-compatible API in front of Dify apps.

`create_app(settings)` builds the Flask app; gunicorn serves the module-level `app`
(`gunicorn -c gunicorn.conf.py openai_to_dify:app`); `python openai_to_dify.py` starts that
same server, and with no Dify configured it first starts the bundled Dify emulator (demo).

Heavy imports (flask, requests, the gateway's packages) happen inside `create_app`, which
gunicorn's gevent worker calls after it has monkey-patched the process: nothing here may
import requests or ssl at module level.

The request path starts in `edge/chat.py`; docs/architecture.md follows it module by module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import ConfigError, Settings, load_env_file, load_settings
from edge.logs import console_line, error_exit  # the standard library only

if TYPE_CHECKING:
    from flask import Flask

ROOT = Path(__file__).resolve().parent
# Dify apps of the bundled emulator that the demo serves as models.
DEMO_APP_KEYS = "app-demo-chat,app-demo-agent,app-demo-chatflow,app-demo-completion,app-demo-workflow"


def create_app(settings: Settings | None = None) -> Flask:
    """The wiring: one Dify client, app registry and Gateway per worker, the edge's hooks, and
    the blueprints. A request's path: edge/chat.py -> engine/chat.py -> dify_io/relay.py ->
    core/response/ (docs/architecture.md)."""
    import logging

    from flask import Flask

    from dify_io import metrics
    from dify_io.client import DifyClient
    from dify_io.registry import AppRegistry
    from edge import audio, chat, completions, docs, health, hooks, models, responses
    from edge import metrics as metrics_page
    from edge.admission import Admission
    from edge.observe import configure_logging
    from edge.wiring import install_gateway
    from engine.gateway import Gateway

    settings = settings or load_settings()
    configure_logging(settings)
    # urllib3 logs each connection retry; the gateway reports the outcome once.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    app = Flask(__name__)
    app.json.sort_keys = False  # keep OpenAI's field order, and skip the sorting work
    app.json.compact = True
    dify = DifyClient(settings.dify_api_base, settings.timeout, settings.pool_size)
    registry = AppRegistry(dify, settings.dify_api_keys, settings.app_info_ttl, settings.model_aliases,
                           settings.default_model, settings.model_id_style)
    install_gateway(app, Gateway(settings, dify, registry))
    hooks.install(app, settings, Admission(settings.max_concurrent_requests))
    # The OpenAI surface answers with and without the /v1 prefix, and under /v1/v1 (what
    # NextChat calls when its base URL already ends in /v1).
    for prefix in ("/v1", "", "/v1/v1"):
        for blueprint in (chat.bp, completions.bp, responses.bp, audio.bp, models.bp):
            app.register_blueprint(blueprint, url_prefix=prefix, name=f"{blueprint.name}{prefix.replace('/', '_')}")
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(metrics_page.bp)
    if settings.metrics:
        metrics.enable()
    registry.start()
    return app


def __getattr__(name: str) -> Any:
    """`openai_to_dify.app` for gunicorn, built on first access (not at import)."""
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(name)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_demo_emulator() -> subprocess.Popen:
    """Start the bundled Dify emulator and point this process's settings at it."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "dify_emulator", "--port", str(port)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if "listening" in line:
            break
    else:
        raise error_exit("the bundled Dify emulator did not start")
    # Keep reading its output so a full pipe never blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    os.environ["DIFY_API_BASE"] = f"http://127.0.0.1:{port}/v1"
    os.environ["DIFY_API_KEYS"] = DEMO_APP_KEYS
    return process


def _banner(settings: Settings, demo: bool) -> str:
    base = f"http://{settings.server_host}:{settings.server_port}/v1"
    lines = [f"OpenDify serving {len(settings.dify_api_keys)} Dify app(s) from {settings.dify_api_base} at {base}"]
    if demo:
        key = settings.valid_api_keys[0] if settings.valid_api_keys else "any-key"
        lines += [
            "DEMO MODE: no DIFY_API_BASE/DIFY_API_KEYS set, so the bundled Dify emulator answers.",
            "Try it:",
            f"  curl -N {base}/chat/completions -H 'Authorization: Bearer {key}' \\",
            "    -H 'Content-Type: application/json' \\",
            """    -d '{"model": "demo-chat", "stream": true, "messages": [{"role": "user", "content": "Hello!"}]}'""",
        ]
    return "\n".join(lines)


def main() -> None:
    load_env_file()
    demo = not os.environ.get("DIFY_API_BASE") and not os.environ.get("DIFY_API_KEYS")
    emulator = _start_demo_emulator() if demo else None
    try:
        try:
            settings = load_settings()
        except ConfigError as exc:
            raise error_exit(str(exc)) from None
        if settings.log_level in ("DEBUG", "INFO"):  # an INFO line, in the log's format
            print(console_line(_banner(settings, demo), settings.log_format == "json"), flush=True)
        from gunicorn.app.wsgiapp import run

        sys.argv = ["gunicorn", "--config", str(ROOT / "gunicorn.conf.py"), "openai_to_dify:app"]
        run()
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(10)


if __name__ == "__main__":
    main()
