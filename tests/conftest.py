"""Fixtures: the Dify emulator and the gateway, both served for real on loopback ports."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
import requests

from dify_emulator.control import EmulatorProcess, start_emulator
from tests.gateway_process import ROOT, GatewayProcess
from tests.raw_dify import RawDify

CLIENT_KEY = "sk-opendify-test"
CHAT_KEYS = "app-demo-chat,app-demo-agent,app-demo-chatflow"
LEGACY_VENV = ROOT / ".venv-legacy"
LEGACY_LOCK = ROOT / "tests" / "legacy-openai.lock"  # openai==0.28.1 and its dependencies, pinned


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    with start_emulator() as process:
        yield process


@pytest.fixture(scope="session")
def start_gateway(emulator: EmulatorProcess) -> Iterator[Callable[..., GatewayProcess]]:
    """Start a gateway with environment overrides; every one started is stopped at the end."""
    started: list[GatewayProcess] = []

    def start(ready_path: str = "/readyz", **env: str) -> GatewayProcess:
        settings = {
            "DIFY_API_BASE": emulator.base_url,
            "DIFY_API_KEYS": CHAT_KEYS,
            "VALID_API_KEYS": CLIENT_KEY,
            "CONVERSATION_MEMORY_MODE": "0",
            "KEEPALIVE_INTERVAL": "1",
            **env,
        }
        gateway = GatewayProcess(settings, ready_path=ready_path)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return start_gateway()


@pytest.fixture(scope="module")
def raw_dify() -> Iterator[RawDify]:
    """A raw fake Dify (tests/raw_dify.py) for the tests of one module, which script its answers."""
    server = RawDify()
    yield server
    server.close()


@pytest.fixture
def recorded(emulator: EmulatorProcess) -> EmulatorProcess:
    """The emulator with its request records cleared for this test."""
    emulator.reset()
    return emulator


@pytest.fixture
def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.fixture
def http(gateway: GatewayProcess) -> Callable[..., requests.Response]:
    """Raw HTTP to the gateway with the client key (curl-like)."""

    def call(method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 30)
        return requests.request(method, gateway.root_url + path, headers=headers, **kwargs)

    return call


@pytest.fixture(scope="session")
def legacy_python() -> Path:
    """A virtualenv with the legacy openai 0.28 SDK, made once from its lock file and kept in
    .venv-legacy (made again when the lock changes)."""
    python = LEGACY_VENV / "bin" / "python"
    marker = LEGACY_VENV / ".installed"
    pinned = LEGACY_LOCK.read_text()
    if not marker.exists() or marker.read_text() != pinned:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(LEGACY_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(LEGACY_LOCK)], check=True)
        marker.write_text(pinned)
    return python
