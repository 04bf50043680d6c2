"""POST /v1/responses through the real gateway: the openai SDK's responses.create and
responses.stream, a function-tool round trip, previous_response_id, every app type, errors."""

from __future__ import annotations

import json
import os
import subprocess

import openai
import pytest
import requests

from core.request.chat_request import RequestLimits
from core.request.responses_request import parse_responses_request
from core.request.tools import tool_instructions
from tests.conftest import CLIENT_KEY
from tests.gateway_process import ROOT
from tests.scenarios import chat_requests, directive

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather forecast.", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
WEATHER_INSTRUCTIONS = tool_instructions(parse_responses_request({"model": "m", "input": "x", "tools": [WEATHER]},
                                                                 RequestLimits()).chat.tools)
PARIS_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def sse_events(response: requests.Response) -> list[dict]:
    """The events of a Responses stream, checking the framing: `event:` names its data's type."""
    events, name = [], None
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            event = json.loads(line[6:])
            assert event["type"] == name
            events.append(event)
            name = None
        else:
            assert line == "" or line.startswith(":"), line
    return events


def test_create_answers_a_response_object(sdk, recorded):
    response = sdk.responses.create(model="demo-chat", input="Hello there", instructions="Be brief.")
    assert response.object == "response" and response.status == "completed" and response.model == "demo-chat"
    assert response.output_text == "You said: Be brief.\n\nHello there"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Be brief." and response.store is False
    assert only_query(recorded) == "Be brief.\n\nHello there"


def only_query(emulator) -> str:
    [call] = chat_requests(emulator)
    return call["json"]["query"]


def test_stream_has_the_whole_typed_event_sequence(gateway, recorded):
    body = {"model": "demo-chat", "stream": True, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Stream <think>me</think>"}]}]}
    text = "Stream " + directive(answer="<think>pondering</think>All done.")
    body["input"][0]["content"][0]["text"] = text
    events = sse_events(requests.post(gateway.base_url + "/responses", headers=HEADERS, json=body, stream=True,
                                      timeout=30))
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    types = [event["type"] for event in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert types[2:-1] == [
        "response.output_item.added", "response.content_part.added", *["response.reasoning_text.delta"] * 1,
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        *["response.output_text.delta"] * (types.count("response.output_text.delta")),
        "response.output_text.done", "response.content_part.done", "response.output_item.done"]
    completed = events[-1]["response"]
    reasoning, message = completed["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [{"type": "reasoning_text",
                                                                          "text": "pondering"}]
    assert message["content"][0]["text"] == "All done." and completed["status"] == "completed"
    deltas = "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta")
    assert deltas == "All done."
    assert events[0]["response"]["id"] == completed["id"] and completed["id"].startswith("resp_")


def test_the_sdk_stream_helper_accumulates_the_response(sdk):
    with sdk.responses.stream(model="demo-chat", input="Streamed hi") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "You said: Streamed hi" == final.output_text
    assert final.status == "completed"


def test_function_tool_round_trip_with_previous_response_id(sdk, recorded):
    question = f"Weather in Paris? {directive(answer=PARIS_CALL)}"
    first = sdk.responses.create(model="demo-chat", input=question, tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == '{"city":"Paris"}'
    assert call.call_id.startswith("call_") and call.status == "completed"
    result = "Sunny, 21 C\n" + directive(answer="It is sunny in Paris.")
    second = sdk.responses.create(model="demo-chat", previous_response_id=first.id, tools=[WEATHER],
                                  input=[{"type": "function_call_output", "call_id": call.call_id, "output": result}])
    assert second.output_text == "It is sunny in Paris."
    first_call, second_call = chat_requests(recorded)
    conversation = second_call["json"]["conversation_id"]
    assert conversation and first_call["json"]["conversation_id"] == ""
    # Without a store the call's name is not known here: the result goes by its call id.
    assert second_call["json"]["query"] == f'<tool_result id="{call.call_id}">\n{result}\n</tool_result>\n\n' + \
        WEATHER_INSTRUCTIONS
    assert first.id != second.id and second.id.startswith("resp_")


def test_the_whole_history_without_previous_response_id_goes_through_the_memory_mode(sdk, recorded):
    """As Codex sends it: store false, every item of the conversation so far."""
    reply = sdk.responses.create(model="demo-chat", store=False, input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
    ], tools=[WEATHER])
    assert reply.status == "completed"
    assert only_query(recorded) == (
        'Be brief.\n\nWeather?\n\nAssistant:\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '</tool_call>\n\n<tool_result name="get_weather" id="call_1">\nSunny\n</tool_result>\n\n'
        + WEATHER_INSTRUCTIONS)


def test_previous_response_id_continues_the_dify_conversation(sdk, recorded):
    first = sdk.responses.create(model="demo-chat", input="first turn")
    second = sdk.responses.create(model="demo-chat", input="second turn", previous_response_id=first.id)
    third = sdk.responses.create(model="demo-chat", input="third turn", previous_response_id=second.id)
    calls = chat_requests(recorded)
    conversation = calls[1]["json"]["conversation_id"]
    assert [call["json"]["conversation_id"] for call in calls] == ["", conversation, conversation]
    assert [call["json"]["query"] for call in calls] == ["first turn", "second turn", "third turn"]
    assert third.output_text == "You said: third turn"
    # Branching from an older response: Dify continues only from a conversation's newest message.
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="demo-chat", input="a branch", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_latest"


def test_hosted_tools_are_left_out_and_groups_are_opened(sdk, recorded):
    tools = [{"type": "web_search", "external_web_access": False},
             {"type": "namespace", "name": "group", "description": "A group.", "tools": [WEATHER]},
             {"type": "file_search", "vector_store_ids": ["vs_1"]}]
    sdk.responses.create(model="demo-chat", input="Hi", tools=tools)
    query = only_query(recorded)
    assert "- get_weather(city: string): Weather forecast." in query
    assert "web_search" not in query and "file_search" not in query
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="demo-chat", input="Hi", tools=tools, tool_choice={"type": "web_search"})
    assert caught.value.code == "unsupported_tool" and "web_search" in caught.value.message


def test_text_format_json_schema_answers_parse(sdk):
    answer = 'Here: {"city": "Paris", "days": 3}'
    response = sdk.responses.create(model="demo-chat", input=f"Plan {directive(answer=answer)}", text={"format": {
        "type": "json_schema", "name": "plan", "schema": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer"}}}}})
    assert json.loads(response.output_text) == {"city": "Paris", "days": 3}


def test_unknown_previous_response_and_stored_routes_are_clear_errors(gateway):
    response = requests.post(gateway.base_url + "/responses", headers=HEADERS, timeout=10,
                             json={"model": "demo-chat", "input": "x", "previous_response_id": "resp_abc"})
    assert response.status_code == 404 and response.json()["error"]["code"] == "previous_response_not_found"
    for method, path in (("GET", "/responses/resp_1"), ("DELETE", "/responses/resp_1"),
                         ("POST", "/responses/resp_1/cancel")):
        answer = requests.request(method, gateway.base_url + path, headers=HEADERS, timeout=10)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "response_not_stored"
        assert "stores no responses" in answer.json()["error"]["message"]


def test_a_dify_failure_before_the_first_token_is_an_http_error(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="demo-chat", input=f"x {directive(error_after=0)}", stream=True)
    assert "emulated model failure" in caught.value.message


def test_a_dify_failure_after_tokens_ends_the_stream_with_response_failed(gateway):
    body = {"model": "demo-chat", "stream": True, "input": f"one two three {directive(error_after=2)}"}
    events = sse_events(requests.post(gateway.base_url + "/responses", headers=HEADERS, json=body, stream=True,
                                      timeout=30))
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "completion_request_error"
    assert "".join(event["delta"] for event in events if event["type"] == "response.output_text.delta") == \
        "You said: "
    assert events[-2]["type"] == "response.output_item.done"


@pytest.mark.parametrize("model", ["demo-agent", "demo-chatflow"])
def test_every_chat_app_type(sdk, model):
    response = sdk.responses.create(model=model, input="what time is it")
    assert response.output_text == "You said: what time is it"
    if model == "demo-agent":
        assert response.output[0].type == "reasoning"
        assert response.output[0].content[0].text.startswith("Calling tool current_time with {}")


@pytest.fixture(scope="module")
def text_apps_gateway(start_gateway):
    return start_gateway(DIFY_API_KEYS="app-demo-completion,app-demo-workflow")


@pytest.mark.parametrize("model", ["demo-completion", "demo-workflow"])
@pytest.mark.parametrize("stream", [False, True])
def test_completion_and_workflow_apps(text_apps_gateway, model, stream):
    client = openai.OpenAI(base_url=text_apps_gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    if stream:
        with client.responses.stream(model=model, input="write a line") as events:
            response = events.get_final_response()
    else:
        response = client.responses.create(model=model, input="write a line")
    assert response.output_text == "You said: write a line"
    assert response.id.startswith("resp_") and len(response.id) == 5 + 32  # no conversation to carry


def test_the_agents_sdk_runs_a_function_tool_on_the_responses_model(gateway, recorded):
    """openai-agents: a Runner with one function tool, on its Responses model (OpenAIResponsesModel)."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    asked = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather forecast for a city."""
        asked.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    agent = Agent(name="forecaster", instructions="Use the tool.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="demo-chat", openai_client=client))
    question = "Weather in Paris? " + directive(answer=PARIS_CALL, after_tool_result="It is sunny in Paris.")
    result = Runner.run_sync(agent, question, max_turns=4)
    assert asked == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    first, second = chat_requests(recorded)
    assert "- get_weather(city: string): Weather forecast for a city." in first["json"]["query"]
    assert '<tool_result name="get_weather"' in second["json"]["query"]
    assert "Sunny in Paris" in second["json"]["query"]


CODEX = ROOT / "tests" / "codex" / "node_modules" / ".bin" / "codex"
SHELL_CALL = '<tool_call>{"name": "exec_command", "arguments": {"cmd": "echo opendify-codex-check"}}</tool_call>'


def test_codex_cli_runs_a_shell_command_through_the_gateway(gateway, recorded, tmp_path):
    """`codex exec` with a custom provider (wire_api = "responses") and Codex's own defaults
    otherwise; the emulator plays the model: one shell call, then the final answer."""
    assert CODEX.exists(), "Codex CLI is missing: `make test` installs it (npm ci --prefix tests/codex)"
    (tmp_path / "config.toml").write_text(
        'model = "demo-chat"\nmodel_provider = "opendify"\n\n[model_providers.opendify]\nname = "OpenDify"\n'
        f'base_url = "{gateway.base_url}"\nenv_key = "OPENDIFY_KEY"\nwire_api = "responses"\n')
    prompt = "Run echo opendify-codex-check and tell me what it printed. " + directive(
        answer=SHELL_CALL, after_tool_result="The command printed opendify-codex-check.")
    result = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", prompt], cwd=tmp_path, timeout=240,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env={**os.environ, "CODEX_HOME": str(tmp_path), "OPENDIFY_KEY": CLIENT_KEY})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "The command printed opendify-codex-check."
    calls = chat_requests(recorded)
    assert len(calls) == 2
    assert "- exec_command(cmd: string" in calls[0]["json"]["query"]
    assert "web_search" not in calls[0]["json"]["query"]  # Codex offers it unasked; Dify cannot run it
    second = calls[1]["json"]["query"]
    assert '<tool_result name="exec_command"' in second and "opendify-codex-check" in second.split("<tool_result")[1]
