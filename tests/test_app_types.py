"""Every Dify app type behind chat completions: routes, inputs, memory, mode inference."""

from __future__ import annotations

import openai
import pytest

from core.items import ZERO_WIDTH_DIGITS, ZERO_WIDTH_SEPARATOR
from dify_emulator.control import start_emulator
from tests.conftest import CLIENT_KEY
from tests.scenarios import user_message

APP_TYPES_KEYS = "app-demo-chat,app-demo-completion,app-demo-workflow"
INVISIBLE = set(ZERO_WIDTH_DIGITS + ZERO_WIDTH_SEPARATOR)


@pytest.fixture(scope="module")
def app_types_client(start_gateway):
    gateway = start_gateway(DIFY_API_KEYS=APP_TYPES_KEYS, CONVERSATION_MEMORY_MODE="2")
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def calls(emulator, path):
    return [record["json"] for record in emulator.requests() if record["path"] == path]


@pytest.mark.parametrize("stream", [False, True])
def test_completion_app_gets_the_text_in_its_query_input(app_types_client, recorded, stream):
    messages = [{"role": "system", "content": "Translate."}, {"role": "user", "content": "bonjour"}]
    if stream:
        chunks = app_types_client.chat.completions.create(model="demo-completion", messages=messages, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    else:
        text = app_types_client.chat.completions.create(model="demo-completion", messages=messages).choices[0]
        text = text.message.content
    assert text == "You said: Translate.\n\nbonjour"  # no conversation id is embedded: no conversations
    [call] = calls(recorded, "/v1/completion-messages")
    assert call["inputs"]["query"] == call["query"] == "Translate.\n\nbonjour"
    assert call["response_mode"] == "streaming" and "conversation_id" not in call


@pytest.mark.parametrize("stream", [False, True])
def test_workflow_app_gets_the_text_in_its_first_required_input(app_types_client, recorded, stream):
    messages = user_message("run the flow")
    if stream:
        chunks = list(app_types_client.chat.completions.create(model="demo-workflow", messages=messages,
                                                               stream=True, stream_options={"include_usage": True}))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert chunks[-1].usage.total_tokens > 0
    else:
        completion = app_types_client.chat.completions.create(model="demo-workflow", messages=messages)
        text = completion.choices[0].message.content
        assert completion.usage.total_tokens > 0
    assert text == "You said: run the flow"
    [call] = calls(recorded, "/v1/workflows/run")
    assert call["inputs"] == {"text": "run the flow"} and "query" not in call


def test_workflow_failure_is_an_error(app_types_client):
    with pytest.raises(openai.APIStatusError) as caught:
        app_types_client.chat.completions.create(
            model="demo-workflow", messages=user_message("x", workflow_status="failed", workflow_error="node broke"))
    assert caught.value.status_code == 502 and "node broke" in caught.value.message


def test_workflow_answer_from_outputs(app_types_client):
    completion = app_types_client.chat.completions.create(
        model="demo-workflow", messages=user_message("x", chunks=[], outputs={"result": "forty-two"}))
    assert completion.choices[0].message.content == "forty-two"


def test_apps_without_conversations_fold_the_history_in_mode_2(app_types_client, recorded):
    app_types_client.chat.completions.create(model="demo-completion", messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "You said: first"},
        {"role": "user", "content": "second"}])
    [call] = calls(recorded, "/v1/completion-messages")
    assert call["query"] == "User:\nfirst\n\nAssistant:\nYou said: first\n\nCurrent question:\nsecond"


@pytest.mark.parametrize(("model", "route", "variable"), [("demo-completion", "/v1/completion-messages", "query"),
                                                          ("demo-workflow", "/v1/workflows/run", "text")])
def test_mode_2_ids_of_a_chat_apps_replies_stay_out_of_apps_without_conversations(app_types_client, recorded,
                                                                                   model, route, variable):
    # A chat that switches from a chat app (whose replies carry the ids) to a completion or workflow app.
    reply = app_types_client.chat.completions.create(model="demo-chat", messages=user_message("first"))
    assert set(reply.choices[0].message.content) & INVISIBLE
    app_types_client.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": reply.choices[0].message.content},
        {"role": "user", "content": "second"}])
    [call] = calls(recorded, route)
    assert call["inputs"][variable] == (
        "User:\nfirst\n\nAssistant:\nYou said: first\n\nCurrent question:\nsecond")


INPUT_APPS = [
    {"key": "app-translate", "name": "translator", "mode": "completion", "user_input_form": [
        {"paragraph": {"variable": "source", "label": "Source", "required": True, "default": "Paste a text."}},
        {"select": {"variable": "language", "label": "Language", "required": True, "options": ["fr", "de"]}},
        {"text-input": {"variable": "tone", "label": "Tone", "required": False, "default": "formal"}}]},
    {"key": "app-writer", "name": "writer", "mode": "completion", "user_input_form": [
        {"paragraph": {"variable": "query", "label": "Query", "required": True, "default": "Write a poem."}}]},
    {"key": "app-legacy-flow", "name": "legacy-flow", "mode": "workflow", "info_has_mode": False,
     "user_input_form": [{"paragraph": {"variable": "text", "label": "Text", "required": True}}]},
    {"key": "app-legacy-chat", "name": "legacy-chat", "mode": "chat", "info_has_mode": False},
]


@pytest.fixture(scope="module")
def inputs_setup(start_gateway):
    with start_emulator(apps=INPUT_APPS) as emulator:
        gateway = start_gateway(DIFY_API_BASE=emulator.base_url,
                                DIFY_API_KEYS=",".join(app["key"] for app in INPUT_APPS))
        yield emulator, openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def test_inputs_are_merged_over_defaults_and_text_goes_to_the_first_required_text_field(inputs_setup):
    emulator, client = inputs_setup
    emulator.reset()
    completion = client.chat.completions.create(model="translator", messages=user_message("hello"),
                                                extra_body={"inputs": {"language": "fr"}})
    [call] = calls(emulator, "/v1/completion-messages")
    # The user's message, not the form's default for its variable.
    assert call["inputs"] == {"language": "fr", "tone": "formal", "source": "hello"}
    # The emulator echoes a completion app's first string input, here the text variable.
    assert completion.choices[0].message.content == "You said: hello"


@pytest.mark.parametrize("route", ["chat", "text"])
def test_the_users_text_replaces_the_default_of_the_query_input(inputs_setup, route):
    emulator, client = inputs_setup
    emulator.reset()
    if route == "chat":
        text = client.chat.completions.create(model="writer", messages=user_message("a haiku")).choices[0]
        text = text.message.content
    else:
        text = client.completions.create(model="writer", prompt="a haiku").choices[0].text
    assert text == "You said: a haiku"  # the emulator echoes the `query` input
    [call] = calls(emulator, "/v1/completion-messages")
    assert call["inputs"] == {"query": "a haiku"} and call["query"] == "a haiku"


def test_the_requests_own_value_for_the_text_input_wins(inputs_setup):
    emulator, client = inputs_setup
    emulator.reset()
    completion = client.chat.completions.create(model="translator", messages=user_message("hello"),
                                                extra_body={"inputs": {"language": "de", "source": "guten Tag"}})
    [call] = calls(emulator, "/v1/completion-messages")
    assert call["inputs"] == {"language": "de", "tone": "formal", "source": "guten Tag"} and call["query"] == "hello"
    assert completion.choices[0].message.content == "You said: guten Tag"


def test_missing_required_inputs_are_400_before_dify_is_called(inputs_setup):
    emulator, client = inputs_setup
    emulator.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="translator", messages=user_message("hello"))
    assert caught.value.code == "missing_required_inputs" and "language" in caught.value.message
    assert caught.value.body["param"] == "inputs"
    assert calls(emulator, "/v1/completion-messages") == []


def test_mode_is_inferred_for_dify_before_1_4(inputs_setup):
    emulator, client = inputs_setup
    emulator.reset()
    assert client.chat.completions.create(model="legacy-flow", messages=user_message("a")).choices[0] \
        .message.content == "You said: a"
    assert client.chat.completions.create(model="legacy-chat", messages=user_message("b")).choices[0] \
        .message.content == "You said: b"
    assert len(calls(emulator, "/v1/workflows/run")) == 1 and len(calls(emulator, "/v1/chat-messages")) == 1


def test_stopped_workflow_ends_normally_with_what_it_said(app_types_client):
    completion = app_types_client.chat.completions.create(
        model="demo-workflow", messages=user_message("a b c", workflow_status="stopped"))
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "You said: a b c"  # all Dify sent before it stopped
