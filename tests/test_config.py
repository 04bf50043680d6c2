"""Unit tests: configuration is read once and a bad value fails with one clear line."""

import os
import re
import runpy
import subprocess
import sys
from dataclasses import fields

import pytest

from config import SETTINGS, ConfigError, Settings, load_settings
from tests.gateway_process import ROOT

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
    monkeypatch.setenv("OPENDIFY_ENV_FILE", os.devnull)
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


def test_gunicorn_refuses_a_bad_value_with_the_same_line(monkeypatch):
    with pytest.raises(SystemExit, match=r"^error: WORKER_CONNECTIONS must be a whole number \(got 'many'\)$"):
        gunicorn_config(monkeypatch, WORKER_CONNECTIONS="many")


def test_gunicorn_started_directly_fails_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), **BASE, "WORKERS": "0"}
    result = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "openai_to_dify:app"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["error: WORKERS must be at least 1 (got '0')"]
