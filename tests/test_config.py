"""Unit tests: configuration is read once and a bad value fails with one clear line."""

import subprocess
import sys

import pytest

from config import ConfigError, load_settings
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
