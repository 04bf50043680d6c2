"""What real front ends send: request shapes of newer clients, tool lists on every turn
(TOOL_CALLING), and background tasks routed to a cheaper app (MODEL_ALIASES)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from core.request.tools import parse_tool_request, tool_instructions
from tests.conftest import CLIENT_KEY
from tests.scenarios import chat_requests, directive

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
OPEN_WEBUI_TOOLS = json.loads((Path(__file__).parent / "data" / "open_webui_tools.json").read_text())
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather forecast.", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
EPHEMERAL = {"type": "ephemeral"}
PARIS_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def post(gateway, body: dict) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, json=body, timeout=30)


def only_query(emulator) -> str:
    [call] = chat_requests(emulator)
    return call["json"]["query"]


def test_newer_clients_fields_and_block_contents_are_accepted(gateway, recorded):
    """Cursor and Anthropic-style clients send instructions as blocks with cache_control; newer
    SDKs add reasoning and output fields a Dify app fixes itself."""
    body = {
        "model": "demo-chat",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": EPHEMERAL}]},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi there", "cache_control": EPHEMERAL}]},
        ],
        "max_completion_tokens": 300, "reasoning_effort": "low", "verbosity": "low",
        "prediction": {"type": "content", "content": "Hello"}, "modalities": ["text"],
        "audio": {"voice": "alloy", "format": "mp3"}, "store": False, "metadata": {"topic": "greeting"},
        "service_tier": "auto", "parallel_tool_calls": True, "logit_bias": {"50256": -100},
    }
    response = post(gateway, body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: Be brief.\n\nUse metric units.\n\nHi there"
    assert only_query(recorded) == "Be brief.\n\nUse metric units.\n\nHi there"


@pytest.mark.parametrize("tool_choice", [
    {"type": "function", "function": {"name": "get_weather"}},
    {"type": "function", "name": "get_weather"},
], ids=["chat-shape", "flat-shape"])
def test_strict_tools_and_both_named_tool_choice_shapes(gateway, recorded, tool_choice):
    body = {"model": "demo-chat", "tools": [WEATHER], "tool_choice": tool_choice,
            "messages": [{"role": "user", "content": f"Weather? {directive(answer=PARIS_CALL)}"}]}
    response = post(gateway, body)
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert "You must call the function get_weather in this answer." in only_query(recorded)


def test_a_front_ends_tool_list_is_described_compactly(gateway, recorded):
    question = "What is 2+2?"
    response = post(gateway, {"model": "demo-chat", "tools": OPEN_WEBUI_TOOLS,
                              "messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200
    instructions = tool_instructions(parse_tool_request({"tools": OPEN_WEBUI_TOOLS}))
    assert only_query(recorded) == f"{question}\n\n{instructions}"
    assert len(instructions) < 8200  # 28 tools; as minified JSON schemas they took 12,156 characters


@pytest.fixture(scope="module")
def tools_off_gateway(start_gateway):
    """Tool calling off for the chatflow app only (by its name), on for the others."""
    return start_gateway(TOOL_CALLING_BY_MODEL="demo-chatflow=off")


def test_tool_calling_off_for_one_model_leaves_its_queries_bare(tools_off_gateway, recorded):
    for model in ("demo-chatflow", "demo-chat"):
        response = post(tools_off_gateway, {"model": model, "tools": OPEN_WEBUI_TOOLS,
                                            "messages": [{"role": "user", "content": "Hello"}]})
        assert response.status_code == 200
    off, on = (call["json"]["query"] for call in chat_requests(recorded))
    assert off == "Hello"
    assert on.startswith("Hello\n\n# Tools\n") and "- search_web(" in on
    # An answer that looks like a call stays text when tools are off.
    response = post(tools_off_gateway, {"model": "demo-chatflow", "tools": [WEATHER],
                                        "messages": [{"role": "user", "content": directive(answer=PARIS_CALL)}]})
    assert response.json()["choices"][0]["message"] == {"role": "assistant", "content": PARIS_CALL, "refusal": None}


@pytest.mark.parametrize("choice", [{"tool_choice": "required"},
                                    {"tool_choice": {"type": "function", "name": "get_weather"}}])
def test_a_required_call_to_a_model_without_tools_is_a_400(tools_off_gateway, recorded, choice):
    response = post(tools_off_gateway, {"model": "demo-chatflow", "tools": [WEATHER], **choice,
                                        "messages": [{"role": "user", "content": "Weather?"}]})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "The model `demo-chatflow` takes no tools (TOOL_CALLING=off), so 'tool_choice' cannot require "
                   "a call.",
        "type": "invalid_request_error", "param": "tool_choice", "code": "tools_not_supported"}
    assert chat_requests(recorded) == []


def test_tool_calling_off_everywhere(start_gateway, recorded):
    gateway = start_gateway(TOOL_CALLING="off", TOOL_CALLING_BY_MODEL="demo-agent=prompt")
    for model in ("demo-chat", "demo-agent"):
        assert post(gateway, {"model": model, "tools": [WEATHER],
                              "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
    bare, described = (call["json"]["query"] for call in chat_requests(recorded))
    assert bare == "Hi" and described.startswith("Hi\n\n# Tools\n")


OPEN_WEBUI_TITLE_TASK = (
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Output:\nJSON format: { \"title\": \"your concise title here\" }\n"
    "### Chat History:\n<chat_history>\nUSER: How do I bake bread?\n</chat_history>")


def test_background_tasks_go_to_a_cheaper_app_through_an_alias(start_gateway, recorded):
    """Open WebUI's title task (and NextChat's gpt-4o-mini summaries) routed to a completion app."""
    gateway = start_gateway(DIFY_API_KEYS="app-demo-chat,app-demo-completion",
                            MODEL_ALIASES="gpt-4o-mini=demo-completion,title-task=demo-completion")
    for model in ("gpt-4o-mini", "title-task"):
        response = post(gateway, {"model": model, "stream": False, "max_tokens": 1000,
                                  "messages": [{"role": "user", "content": OPEN_WEBUI_TITLE_TASK}]})
        assert response.status_code == 200 and response.json()["model"] == model
    assert chat_requests(recorded) == []
    completions = chat_requests(recorded, "/v1/completion-messages")
    assert [call["app_key"] for call in completions] == ["app-demo-completion"] * 2
    assert all(call["json"]["inputs"]["query"] == OPEN_WEBUI_TITLE_TASK for call in completions)
