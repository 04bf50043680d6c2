"""The legacy openai==0.28 SDK, in its own virtualenv, against the real gateway."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import CLIENT_KEY


def test_legacy_openai_028(legacy_python, gateway):
    script = Path(__file__).with_name("legacy_client.py")
    result = subprocess.run([str(legacy_python), str(script), gateway.base_url, CLIENT_KEY],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["content"] == "You said: legacy hi" and results["finish_reason"] == "stop"
    assert results["usage"] > 0
    assert results["streamed"] == "You said: legacy stream"
    assert results["models"] == ["demo-chat", "demo-agent", "demo-chatflow"]
    assert results["not_found"] == ["model_not_found", "model", 404]
    assert results["auth"] == 401
    assert "emulated model failure" in results["stream_error"]
    assert results["engine"] == "You said: by engine"
    assert results["completion"] == ["text_completion", "You said: complete me"]
    assert results["completion_stream"] == "You said: stream me"
