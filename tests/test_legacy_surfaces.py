"""/v1/completions, n > 1, engine and Azure routes, model aliases: with real clients."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from langchain_openai import OpenAI as LangChainOpenAI

from tests.conftest import CLIENT_KEY
from tests.scenarios import user_message
from tests.test_http_surface import assert_openai_error, read_sse

SURFACE_KEYS = "app-demo-chat,app-demo-completion,app-demo-workflow"


@pytest.fixture(scope="module")
def surface(start_gateway):
    return start_gateway(DIFY_API_KEYS=SURFACE_KEYS, MAX_CHOICES="6", MODEL_ALIASES="gpt-4o-mini=demo-chat")


@pytest.fixture(scope="module")
def sdk(surface):
    return openai.OpenAI(base_url=surface.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("model", ["demo-chat", "demo-completion", "demo-workflow"])
def test_text_completion_for_every_app_type(sdk, model):
    completion = sdk.completions.create(model=model, prompt="say this")
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.choices[0].text == "You said: say this" and completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens > 0


def test_prompt_list_and_n_give_choices_in_prompt_order(sdk, recorded):
    completion = sdk.completions.create(model="demo-chat", prompt=["one", "two", "three"], n=2)
    assert [choice.index for choice in completion.choices] == list(range(6))
    assert [choice.text for choice in completion.choices] == [f"You said: {p}" for p in
                                                               ("one", "one", "two", "two", "three", "three")]
    calls = [r["json"] for r in recorded.requests() if r["path"] == "/v1/chat-messages"]
    assert sorted(call["query"] for call in calls) == sorted(["one", "one", "two", "two", "three", "three"])
    assert all(call["conversation_id"] == "" for call in calls)


def test_streamed_text_completions_interleave_by_index(surface):
    response = requests.post(surface.base_url + "/completions", stream=True, timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                             json={"model": "demo-chat", "prompt": ["a b c", "d e f"], "stream": True,
                                   "stream_options": {"include_usage": True}})
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    texts = {0: "", 1: ""}
    finished = {}
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        texts[choice["index"]] += choice["text"]
        if choice["finish_reason"]:
            finished[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "You said: a b c", 1: "You said: d e f"} and finished == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_echo_and_unsupported_parameters(sdk, http):
    assert sdk.completions.create(model="demo-chat", prompt="hi", echo=True).choices[0].text == "hiYou said: hi"
    for field, value in (("suffix", "!"), ("best_of", 3), ("logprobs", 2)):
        response = http("POST", "/v1/completions", json={"model": "demo-chat", "prompt": "x", field: value})
        assert_openai_error(response, 400, "unsupported_parameter", field)
    assert_openai_error(http("POST", "/v1/completions", json={"model": "demo-chat", "prompt": [1, 2]}), 400,
                        param="prompt")


def test_langchain_openai_batch(surface):
    llm = LangChainOpenAI(base_url=surface.base_url, api_key=CLIENT_KEY, model="demo-chat", max_retries=0)
    assert llm.batch(["first", "second"]) == ["You said: first", "You said: second"]


def test_chat_n_runs_separate_conversations_and_streams_by_index(sdk, recorded):
    completion = sdk.chat.completions.create(model="demo-chat", messages=user_message("twice"), n=2)
    assert [choice.message.content for choice in completion.choices] == ["You said: twice"] * 2
    assert [choice.index for choice in completion.choices] == [0, 1]
    calls = [r["json"] for r in recorded.requests() if r["path"] == "/v1/chat-messages"]
    assert len(calls) == 2 and all(call["conversation_id"] == "" for call in calls)
    chunks = list(sdk.chat.completions.create(model="demo-chat", messages=user_message("a b"), n=2, stream=True))
    by_index = {0: "", 1: ""}
    for chunk in chunks:
        by_index[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert by_index == {0: "You said: a b", 1: "You said: a b"}


def test_n_limits(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="demo-chat", messages=user_message("x"), n=7)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model="demo-chat", prompt=["a", "b", "c", "d"], n=2)


def test_engine_and_azure_routes(surface):
    headers = {"api-key": CLIENT_KEY}
    body = {"messages": user_message("routed")}
    for path in ("/v1/engines/demo-chat/chat/completions", "/openai/deployments/demo-chat/chat/completions"):
        response = requests.post(surface.root_url + path + "?api-version=2024-02-01", json=body, headers=headers,
                                 timeout=30)
        assert response.json()["choices"][0]["message"]["content"] == "You said: routed", path
    response = requests.post(surface.root_url + "/openai/deployments/demo-completion/completions", headers=headers,
                             json={"prompt": "azure text"}, timeout=30)
    assert response.json()["choices"][0]["text"] == "You said: azure text"


def test_model_alias_and_default_model(sdk, start_gateway):
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=user_message("topic")).choices[0] \
        .message.content == "You said: topic"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-5", messages=user_message("x"))
    fallback = start_gateway(DEFAULT_MODEL="demo-chat")
    client = openai.OpenAI(base_url=fallback.base_url, api_key=CLIENT_KEY, max_retries=0)
    assert client.chat.completions.create(model="anything", messages=user_message("y")).choices[0] \
        .message.content == "You said: y"
