"""Model ids are the Dify app names, exactly (spaces kept), and every form of a name selects its app:
the exact id, URL-encoded (`%20`, or `+` from openai 0.28), and the slug listed before."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import quote

import openai
import pytest
import requests

from core.apps import DifyApp, ModelIndex
from dify_emulator.control import start_emulator
from tests.conftest import CLIENT_KEY

NAMED_APPS = [
    {"key": "app-name-1", "name": "My Translation App", "mode": "chat"},
    {"key": "app-name-2", "name": "My Translation App", "mode": "chat"},
    {"key": "app-name-3", "name": "team/helper", "mode": "chat"},
    {"key": "app-name-4", "name": "Story Writer", "mode": "completion",
     "user_input_form": [{"paragraph": {"label": "Query", "variable": "query", "required": True, "default": ""}}]},
]
KEYS = ",".join(app["key"] for app in NAMED_APPS)
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}


def apps(*names: str) -> list[DifyApp]:
    return [DifyApp(key=f"app-{index}", name=name, mode="chat") for index, name in enumerate(names)]


def test_index_lists_exact_names_with_a_suffix_for_repeats():
    index = ModelIndex(apps("My App", "My App", "team/helper", "My App"))
    assert list(index.listed) == ["My App", "My App (2)", "team/helper", "My App (3)"]
    assert [index.id_of(app) for app in index.listed.values()] == list(index.listed)


def test_index_lists_slugs_in_slug_style():
    index = ModelIndex(apps("My App", "My App", "team/helper"), style="slug")
    assert list(index.listed) == ["My-App", "My-App-2", "team-helper"]


@pytest.mark.parametrize(("style", "names", "listed"), [
    ("exact", ("Bot", "Bot", "Bot (2)"), ["Bot", "Bot (3)", "Bot (2)"]),
    ("exact", ("Bot (2)", "Bot", "Bot", "Bot", "Bot (3)"), ["Bot (2)", "Bot", "Bot (4)", "Bot (5)", "Bot (3)"]),
    ("slug", ("Bot", "Bot", "Bot-2"), ["Bot", "Bot-3", "Bot-2"]),
    ("slug", ("Bot", "Bot-2", "Bot"), ["Bot", "Bot-2", "Bot-3"]),
])
def test_a_suffix_never_takes_another_apps_name(style, names, listed):
    served = apps(*names)
    index = ModelIndex(served, style)
    assert list(index.listed) == listed and list(index.listed.values()) == served
    assert [index.id_of(app) for app in served] == listed
    assert [index.find(model_id) for model_id in listed] == served


@pytest.mark.parametrize("style", ["exact", "slug"])
@pytest.mark.parametrize(("name", "position"), [
    ("My App", 0), ("My%20App", 0), ("My+App", 0), ("My-App", 0),
    ("My App (2)", 1), ("My%20App%20(2)", 1), ("My+App+(2)", 1), ("My-App-2", 1),
    ("team/helper", 2), ("team%2Fhelper", 2), ("team-helper", 2),
    ("C++ Coder", 3), ("C%2B%2B+Coder", 3), ("C++-Coder", 3),
])
def test_every_form_of_a_name_finds_its_app(style, name, position):
    served = apps("My App", "My App", "team/helper", "C++ Coder")
    assert ModelIndex(served, style).find(name) is served[position]


def test_an_exact_id_wins_over_another_apps_slug():
    served = apps("Twin Bot", "Twin-Bot")
    index = ModelIndex(served)
    assert index.find("Twin-Bot") is served[1] and index.find("Twin Bot") is served[0]
    assert index.find("twin bot") is None and index.find("Twin") is None


@pytest.fixture(scope="module")
def named_dify():
    with start_emulator(apps=NAMED_APPS) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def named_gateway(start_gateway, named_dify):
    return start_gateway(DIFY_API_BASE=named_dify.base_url, DIFY_API_KEYS=KEYS)


def app_keys_called(emulator, route: str = "/v1/chat-messages") -> list[str]:
    return [record["app_key"] for record in emulator.requests() if record["path"] == route]


def test_models_list_the_exact_names(named_gateway):
    client = openai.OpenAI(base_url=named_gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == [
        "My Translation App", "My Translation App (2)", "team/helper", "Story Writer"]
    assert client.models.retrieve("My Translation App").id == "My Translation App"
    assert client.models.retrieve("team/helper").id == "team/helper"


@pytest.mark.parametrize(("path", "model_id"), [
    ("My%20Translation%20App", "My Translation App"),
    ("My+Translation+App", "My Translation App"),  # openai 0.28's Model.retrieve
    ("My-Translation-App", "My Translation App"),
    ("My%20Translation%20App%20(2)", "My Translation App (2)"),
    ("My-Translation-App-2", "My Translation App (2)"),
    ("team/helper", "team/helper"),
    ("team-helper", "team/helper"),
])
def test_retrieve_by_any_form_answers_the_listed_id(named_gateway, path, model_id):
    response = requests.get(f"{named_gateway.base_url}/models/{path}", headers=HEADERS, timeout=10)
    assert response.status_code == 200
    assert response.json()["id"] == model_id


@pytest.mark.parametrize(("model", "app_key"), [
    ("My Translation App", "app-name-1"),
    ("My%20Translation%20App", "app-name-1"),
    ("My+Translation+App", "app-name-1"),
    ("My-Translation-App", "app-name-1"),
    ("My Translation App (2)", "app-name-2"),
    ("My-Translation-App-2", "app-name-2"),
    ("team/helper", "app-name-3"),
])
def test_chat_by_any_form_reaches_the_app(named_gateway, named_dify, model, app_key):
    named_dify.reset()
    client = openai.OpenAI(base_url=named_gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "You said: hi"
    assert reply.model == model
    assert app_keys_called(named_dify) == [app_key]


@pytest.mark.parametrize(("path", "app_key"), [
    (f"/v1/engines/{quote('My Translation App')}/chat/completions", "app-name-1"),
    ("/v1/engines/My+Translation+App/chat/completions", "app-name-1"),
    (f"/openai/deployments/{quote('My Translation App (2)')}/chat/completions?api-version=2024-02-01", "app-name-2"),
    ("/openai/deployments/team/helper/chat/completions", "app-name-3"),
])
def test_engines_and_deployments_paths_take_any_form(named_gateway, named_dify, path, app_key):
    named_dify.reset()
    response = requests.post(named_gateway.root_url + path, headers=HEADERS, timeout=10,
                             json={"messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi"
    assert app_keys_called(named_dify) == [app_key]


def test_text_completions_take_the_exact_name(named_gateway, named_dify):
    named_dify.reset()
    for model in ("Story Writer", "Story+Writer", "Story-Writer"):
        response = requests.post(named_gateway.base_url + "/completions", headers=HEADERS, timeout=10,
                                 json={"model": model, "prompt": "once"})
        assert response.status_code == 200 and response.json()["model"] == model
    assert app_keys_called(named_dify, "/v1/completion-messages") == ["app-name-4"] * 3


def test_openai_028_retrieves_and_chats_by_the_exact_name(legacy_python, named_gateway):
    script = (
        "import json, sys, openai\n"
        "openai.api_base, openai.api_key = sys.argv[1], sys.argv[2]\n"
        "name = 'My Translation App'\n"
        "model = openai.Model.retrieve(name)\n"
        "reply = openai.ChatCompletion.create(model=name, messages=[{'role': 'user', 'content': 'x'}])\n"
        "engine = openai.ChatCompletion.create(engine=name, messages=[{'role': 'user', 'content': 'y'}])\n"
        "print(json.dumps([model['id'], reply['choices'][0]['message']['content'],"
        " engine['choices'][0]['message']['content']]))\n"
    )
    result = subprocess.run([str(legacy_python), "-c", script, named_gateway.base_url, CLIENT_KEY],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["My Translation App", "You said: x", "You said: y"]


def test_slug_style_lists_slugs_and_still_takes_exact_names(start_gateway, named_dify):
    gateway = start_gateway(DIFY_API_BASE=named_dify.base_url, DIFY_API_KEYS=KEYS, MODEL_ID_STYLE="slug")
    listed = requests.get(gateway.base_url + "/models", headers=HEADERS, timeout=10).json()["data"]
    assert [model["id"] for model in listed] == ["My-Translation-App", "My-Translation-App-2", "team-helper",
                                                 "Story-Writer"]
    named_dify.reset()
    for model in ("My Translation App", "My-Translation-App", "My+Translation+App"):
        response = requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=10,
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
    assert app_keys_called(named_dify) == ["app-name-1"] * 3
    retrieved = requests.get(gateway.base_url + "/models/My Translation App", headers=HEADERS, timeout=10)
    assert retrieved.json()["id"] == "My-Translation-App"


BOT_APPS = [{"key": f"app-bot-{index}", "name": name, "mode": "chat"}
            for index, name in enumerate(("Bot", "Bot", "Bot (2)"), start=1)]


def test_apps_whose_suffixed_ids_meet_a_real_name_are_each_reachable(start_gateway):
    keys = ",".join(app["key"] for app in BOT_APPS)
    with start_emulator(apps=BOT_APPS) as emulator, start_gateway(DIFY_API_BASE=emulator.base_url,
                                                                  DIFY_API_KEYS=keys) as gateway:
        listed = requests.get(gateway.base_url + "/models", headers=HEADERS, timeout=10).json()["data"]
        assert [model["id"] for model in listed] == ["Bot", "Bot (3)", "Bot (2)"]
        for model_id, app_key in (("Bot", "app-bot-1"), ("Bot (3)", "app-bot-2"), ("Bot (2)", "app-bot-3")):
            retrieved = requests.get(f"{gateway.base_url}/models/{quote(model_id)}", headers=HEADERS, timeout=10)
            assert retrieved.status_code == 200 and retrieved.json()["id"] == model_id
            emulator.reset()
            response = requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=10,
                                     json={"model": model_id, "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200 and response.json()["model"] == model_id
            assert app_keys_called(emulator) == [app_key]
