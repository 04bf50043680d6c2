"""GET /v1/models: one model per Dify app key, named after the app, cached with a TTL."""

from __future__ import annotations

import openai
import pytest
import requests

from dify_emulator.control import start_emulator
from tests.conftest import CLIENT_KEY
from tests.scenarios import wait_for


def test_models_list_and_retrieve_with_the_openai_sdk(client):
    models = client.models.list()
    assert [model.id for model in models.data] == ["demo-chat", "demo-agent", "demo-chatflow"]
    assert all(model.object == "model" and model.owned_by == "dify" and model.created > 0 for model in models.data)
    assert client.models.retrieve("demo-agent").id == "demo-agent"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("missing")
    assert caught.value.code == "model_not_found"


SPECIAL_APPS = [
    {"key": "app-twin-1", "name": "Twin Bot", "mode": "chat"},
    {"key": "app-twin-2", "name": "Twin Bot", "mode": "chat"},
    {"key": "app-slash", "name": "team/helper", "mode": "chat"},
    {"key": "app-old", "name": "old-dify", "mode": "chat", "info_has_mode": False},
]


def test_names_duplicates_ttl_and_stale_entries_during_an_outage(start_gateway):
    emulator = start_emulator(apps=SPECIAL_APPS)
    try:
        gateway = start_gateway(DIFY_API_BASE=emulator.base_url, APP_INFO_TTL="1",
                                DIFY_API_KEYS=",".join(app["key"] for app in SPECIAL_APPS))
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

        def model_ids():
            return [model["id"] for model in
                    requests.get(gateway.base_url + "/models", headers=headers, timeout=10).json()["data"]]

        assert model_ids() == ["Twin Bot", "Twin Bot (2)", "team/helper", "old-dify"]
        # The exact Dify name also selects the app; the second twin is reachable by its id.
        for model in ("Twin Bot", "Twin-Bot-2", "team/helper", "old-dify"):
            response = requests.post(gateway.base_url + "/chat/completions", headers=headers, timeout=10,
                                     json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200, (model, response.text)
        keys = [record["app_key"] for record in emulator.requests()
                if record["path"] == "/v1/chat-messages" and record["json"].get("query")]
        assert keys == ["app-twin-1", "app-twin-2", "app-slash", "app-old"]
        # Past the TTL (1 s) a request has the apps looked up again ...
        lookups = sum(1 for record in emulator.requests() if record["path"] == "/v1/info")

        def looked_up_again() -> bool:
            assert model_ids() == ["Twin Bot", "Twin Bot (2)", "team/helper", "old-dify"]
            return sum(1 for record in emulator.requests() if record["path"] == "/v1/info") > lookups

        wait_for(looked_up_again, "a lookup after the TTL")
    finally:
        emulator.stop()
    # ... and when Dify is gone the last good entries keep serving, through the failed lookups.
    failed = "app lookup for key #1 failed"
    assert failed not in gateway.output()

    def lookup_failed() -> bool:
        assert model_ids() == ["Twin Bot", "Twin Bot (2)", "team/helper", "old-dify"]
        return failed in gateway.output()

    wait_for(lookup_failed, "a failed lookup while Dify is gone")
    assert model_ids() == ["Twin Bot", "Twin Bot (2)", "team/helper", "old-dify"]
