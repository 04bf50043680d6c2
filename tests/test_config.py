"""Unit tests: configuration is read once and a bad value fails with one clear line."""

import os
import re
import resource
import runpy
import socket
import subprocess
import sys
from dataclasses import fields
from functools import partial
from pathlib import Path

import pytest
import requests

from config import MAX_OPEN_FILES, SETTINGS, ConfigError, Settings, connections_for, load_settings, open_files_limit
from tests.conftest import CHAT_KEYS, CLIENT_KEY
from tests.gateway_process import ROOT, GatewayProcess
from tests.scenarios import raw_chat_request, user_message

BASE = {"DIFY_API_BASE": "http://127.0.0.1:5001/v1", "DIFY_API_KEYS": "app-a, app-b"}


def test_defaults():
    settings = load_settings(BASE)
    assert settings.dify_api_keys == ("app-a", "app-b")
    assert settings.conversation_memory_mode == 2 and settings.timeout == 30 and settings.smooth_output
    assert settings.open_access and settings.server_host == "127.0.0.1"


@pytest.mark.parametrize(("override", "variable"), [
    ({"DIFY_API_BASE": ""}, "DIFY_API_BASE"),
    ({"DIFY_API_BASE": "api.dify.ai/v1"}, "DIFY_API_BASE"),
    ({"DIFY_API_KEYS": " , "}, "DIFY_API_KEYS"),
    ({"CONVERSATION_MEMORY_MODE": "3"}, "CONVERSATION_MEMORY_MODE"),
    ({"TIMEOUT": "soon"}, "TIMEOUT"),
    ({"SMOOTH_OUTPUT": "maybe"}, "SMOOTH_OUTPUT"),
    ({"SERVER_PORT": "-1"}, "SERVER_PORT"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
])
def test_bad_values_name_the_variable(override, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings({**BASE, **override})


def test_open_access_needs_loopback_or_explicit_opt_in():
    with pytest.raises(ConfigError, match="VALID_API_KEYS"):
        load_settings({**BASE, "SERVER_HOST": "0.0.0.0"})
    assert load_settings({**BASE, "SERVER_HOST": "0.0.0.0", "ALLOW_OPEN_ACCESS": "true"}).open_access
    assert not load_settings({**BASE, "SERVER_HOST": "0.0.0.0", "VALID_API_KEYS": "sk-1"}).open_access
    assert load_settings({**BASE, "SERVER_HOST": "::1"}).open_access


def test_start_fails_with_one_line_naming_the_variable(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), **BASE, "TIMEOUT": "x"}
    result = subprocess.run([sys.executable, "openai_to_dify.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: TIMEOUT must be a number (got 'x')"]


def test_the_table_fills_every_setting():
    assert [setting.field for setting in SETTINGS] == [field.name for field in fields(Settings)]
    assert len({setting.env for setting in SETTINGS}) == len(SETTINGS)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda setting: setting.env)
def test_every_setting_is_documented(setting):
    example = (ROOT / ".env.example").read_text()
    assert re.search(rf"^#? ?{setting.env}=", example, re.MULTILINE), f"{setting.env} is not in .env.example"
    assert f"`{setting.env}`" in (ROOT / "README.md").read_text(), f"{setting.env} is not in the README"


def gunicorn_config(monkeypatch, **env: str) -> dict:
    """gunicorn.conf.py's values, read in this process. METRICS is off unless asked for: with it
    on, the file would set PROMETHEUS_MULTIPROC_DIR here, and every gateway a later test starts
    would inherit it and count into one directory."""
    monkeypatch.setenv("OPENDIFY_ENV_FILE", os.devnull)
    monkeypatch.setenv("METRICS", "off")
    for name, value in {**BASE, **env}.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_takes_its_values_from_the_table(monkeypatch):
    conf = gunicorn_config(monkeypatch, SERVER_HOST="::1", SERVER_PORT="9123", WORKERS="3",
                           WORKER_CONNECTIONS="4321", GUNICORN_TIMEOUT="61", GRACEFUL_TIMEOUT="7", KEEPALIVE="9",
                           ACCESS_LOG="", LOG_LEVEL="warning")
    assert (conf["bind"], conf["workers"], conf["worker_connections"]) == ("::1:9123", 3, 4321)
    assert (conf["timeout"], conf["graceful_timeout"], conf["keepalive"]) == (61, 7, 9)
    assert conf["accesslog"] is None and conf["loglevel"] == "warning" and conf["worker_class"] == "gevent"


def test_worker_connections_follow_the_open_files_limit():
    """Two open files a connection (the client's socket and Dify's) after a reserve of 100, at
    most 10,000; the Dify pool and the admission cap follow."""
    assert [connections_for(limit) for limit in (64, 1024, 4096, 20000, 65536, 1 << 20)] == [
        1, 462, 1998, 9950, 10000, 10000]
    settings = load_settings(BASE, open_files=4096)
    assert (settings.worker_connections, settings.pool_size, settings.max_concurrent_requests) == (1998, 1998, 1798)
    explicit = load_settings({**BASE, "WORKER_CONNECTIONS": "300"}, open_files=4096)
    assert (explicit.worker_connections, explicit.max_concurrent_requests) == (300, 270)
    assert load_settings(BASE).worker_connections == connections_for(open_files_limit())


def test_gunicorn_lifts_the_open_files_limit_and_sizes_workers_from_it(monkeypatch):
    conf = gunicorn_config(monkeypatch)  # in this process: its limit is lifted too
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert open_files_limit() == (MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES))
    assert conf["worker_connections"] == connections_for(open_files_limit())


def test_gunicorn_refuses_a_bad_value_with_the_same_line(monkeypatch):
    with pytest.raises(SystemExit, match=r"^error: WORKER_CONNECTIONS must be a whole number \(got 'many'\)$"):
        gunicorn_config(monkeypatch, WORKER_CONNECTIONS="many")


def test_gunicorn_started_directly_fails_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), **BASE, "WORKERS": "0"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "openai_to_dify:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: WORKERS must be at least 1 (got '0')"]


def open_files(pid: int) -> tuple[int, int]:
    """A process's soft and hard limits on open files, as /proc shows them."""
    row = next(line for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
               if line.startswith("Max open files"))
    soft, hard = row.split()[3:5]
    return int(soft), int(hard)


def test_a_started_gateway_lifts_the_limit_and_admits_what_it_allows(emulator, monkeypatch):
    """Started with 64 open files allowed of a hard limit of 400, the master lifts the limit to
    400 and its worker inherits it: 150 connections, so 135 requests at once; the 136th is refused."""
    def lowered() -> None:  # in the child, before gunicorn starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 400))

    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", partial(subprocess.Popen, preexec_fn=lowered))
        gateway = GatewayProcess({"DIFY_API_BASE": emulator.base_url, "DIFY_API_KEYS": CHAT_KEYS,
                                  "VALID_API_KEYS": CLIENT_KEY, "CONVERSATION_MEMORY_MODE": "0", "LOG_LEVEL": "INFO"})
    held: list[socket.socket] = []
    with gateway:
        (worker,) = gateway.worker_pids()
        assert open_files(gateway.pid) == open_files(worker) == (400, 400)
        assert "Open files limit 400: 150 connections and 135 concurrent requests per worker" in gateway.output()
        request = raw_chat_request({"model": "demo-chat", "stream": True,
                                    "messages": user_message("hold", never_end=True, ping_interval_s=5)}, CLIENT_KEY)
        try:
            for _ in range(135):
                sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
                held.append(sock)
                sock.sendall(request)
            for sock in held:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            refused = requests.post(gateway.base_url + "/chat/completions", timeout=10,
                                    headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                                    json={"model": "demo-chat", "messages": user_message("one more")})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
        finally:
            for sock in held:
                sock.close()
