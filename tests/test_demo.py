"""`python openai_to_dify.py` (what `make run` starts): demo mode and open access."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import openai
import requests

from tests.gateway_process import ROOT, free_port


def test_demo_mode_serves_the_bundled_emulator_and_stops_it(tmp_path):
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DIFY_", "VALID_API_KEYS"))}
    env.update(OPENDIFY_ENV_FILE=str(tmp_path / "none.env"), SERVER_PORT=str(port), WORKERS="1",
               GRACEFUL_TIMEOUT="3", ACCESS_LOG="")
    process = subprocess.Popen([sys.executable, "openai_to_dify.py"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        banner = ""
        for line in process.stdout:
            banner += line
            if "curl" in line:
                break
        assert "DEMO MODE" in banner and f"http://127.0.0.1:{port}/v1/chat/completions" in banner
        emulator_port = int(re.search(r"from http://127\.0\.0\.1:(\d+)/v1", banner).group(1))
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any-key", max_retries=0)
        deadline = time.monotonic() + 20
        while True:
            try:
                models = [model.id for model in client.models.list()]
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the demo gateway did not come up"
                time.sleep(0.2)
        assert models == ["demo-chat", "demo-agent", "demo-chatflow", "demo-completion", "demo-workflow"]
        reply = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "Hello!"}])
        assert reply.choices[0].message.content.startswith("You said: Hello!")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    with socket.socket() as probe:  # the emulator went away with the gateway
        assert probe.connect_ex(("127.0.0.1", emulator_port)) != 0


def test_open_access_on_loopback_needs_no_key(start_gateway):
    gateway = start_gateway(VALID_API_KEYS="")
    response = requests.get(gateway.base_url + "/models", timeout=10)
    assert response.status_code == 200 and response.json()["data"]


def test_open_access_on_a_public_bind_refuses_to_start(tmp_path):
    env = {**os.environ, "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), "DIFY_API_BASE": "http://127.0.0.1:9/v1",
           "DIFY_API_KEYS": "app-x", "VALID_API_KEYS": "", "SERVER_HOST": "0.0.0.0"}
    result = subprocess.run([sys.executable, "openai_to_dify.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0 and "ALLOW_OPEN_ACCESS" in result.stderr
