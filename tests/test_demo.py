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
from tests.test_conversation_memory import SEPARATOR
from tests.test_memory_codec import reference_encode


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
        raw = client.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hello!"}], user="demo-user")
        conversation_id = raw.headers["X-Dify-Conversation-Id"]
        [message] = requests.get(f"http://127.0.0.1:{emulator_port}/v1/messages", timeout=10,
                                 headers={"Authorization": "Bearer app-demo-chat"},
                                 params={"conversation_id": conversation_id, "user": "demo-user"}).json()["data"]
        # Memory mode 2 by default: the reply carries its Dify message and conversation ids, invisibly.
        assert raw.parse().choices[0].message.content == (
            "You said: Hello!" + reference_encode(message["id"]) + SEPARATOR + reference_encode(conversation_id))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    with socket.socket() as probe:  # the emulator went away with the gateway
        assert probe.connect_ex(("127.0.0.1", emulator_port)) != 0


def test_open_access_on_loopback_needs_no_key(start_gateway):
    gateway = start_gateway(VALID_API_KEYS="")
    response = requests.get(gateway.base_url + "/models", timeout=10)
    assert response.status_code == 200
    assert [model["id"] for model in response.json()["data"]] == ["demo-chat", "demo-agent", "demo-chatflow"]


def test_open_access_on_a_public_bind_refuses_to_start(tmp_path):
    env = {**os.environ, "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), "DIFY_API_BASE": "http://127.0.0.1:9/v1",
           "DIFY_API_KEYS": "app-x", "VALID_API_KEYS": "", "SERVER_HOST": "0.0.0.0"}
    result = subprocess.run([sys.executable, "openai_to_dify.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0 and "ALLOW_OPEN_ACCESS" in result.stderr
