"""POST /v1/responses through the real gateway: the openai SDK's responses.create and
responses.stream, a function-tool round trip, previous_response_id, every app type, errors."""

from __future__ import annotations

import json
import os
import subprocess

import openai
import pytest
import requests

from core.items import END, PING, REASONING, REPLACE, TEXT, TOOL_CALL
from core.request.chat_request import RequestLimits
from core.request.responses_request import parse_responses_request
from core.request.tools import tool_instructions
from core.response.render import KEEPALIVE
from core.response.responses_render import ResponseHead, ResponseOutput, ResponsesShape
from core.response.tool_parser import ToolCall
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
    return parse_events(response.iter_lines(decode_unicode=True))


def parse_events(lines) -> list[dict]:
    events, name = [], None
    for line in lines:
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


# -- review findings: moderation, namespaces, malformed input, ids, files in tool output ----------


def test_a_moderated_answer_holds_only_the_replacement(sdk, gateway):
    """Dify's output moderation (message_replace) replaces the answer: the Response object holds
    the replacement alone; a stream, which cannot take back what it sent, ends with it too."""
    scenario = directive(answer="secret bad words", message_replace="[moderated]")
    response = sdk.responses.create(model="demo-chat", input=f"Tell me {scenario}")
    assert response.output_text == "[moderated]"
    assert response.status == "incomplete" and response.incomplete_details.reason == "content_filter"
    events = sse_events(requests.post(gateway.base_url + "/responses", headers=HEADERS, timeout=30, stream=True,
                                      json={"model": "demo-chat", "stream": True, "input": f"Tell me {scenario}"}))
    [done] = [event for event in events if event["type"] == "response.output_text.done"]
    assert done["text"] == "[moderated]"
    completed = events[-1]["response"]
    assert [item["content"][0]["text"] for item in completed["output"]] == ["[moderated]"]
    assert completed["status"] == "incomplete"


SEARCH_CALL = '<tool_call>{"name": "crm.search", "arguments": {"query": "ACME"}}</tool_call>'


def namespace(name: str, *functions: str) -> dict:
    return {"type": "namespace", "name": name, "description": f"The {name} tools.", "tools": [
        {"type": "function", "name": function, "description": f"{function} in {name}.",
         "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}} for function in functions]}


def test_namespaced_tools_keep_their_namespace(sdk, recorded):
    """Two namespaces with a `search` each: the model is offered crm.search and docs.search; a
    call comes back as name `search` and namespace `crm`, and goes back to the model so."""
    tools = [namespace("crm", "search", "lookup"), namespace("docs", "search"), WEATHER]
    first = sdk.responses.create(model="demo-chat", tools=tools, input=f"Find ACME {directive(answer=SEARCH_CALL)}")
    [call] = first.output
    assert (call.type, call.name, call.namespace, call.arguments) == ("function_call", "search", "crm",
                                                                       '{"query":"ACME"}')
    offered = only_query(recorded)
    assert "- crm.search(query?: string): search in crm." in offered
    assert "- docs.search(query?: string): search in docs." in offered
    assert "- lookup(query?: string): lookup in crm." in offered  # no other lookup: its own name
    assert "- get_weather(city: string)" in offered

    recorded.reset()
    second = sdk.responses.create(model="demo-chat", tools=tools, input=[
        {"role": "user", "content": "Find ACME"},
        {"type": "function_call", "call_id": call.call_id, "name": "search", "namespace": "crm",
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "ACME Corp, Berlin"}])
    assert second.status == "completed"
    assert '{"name": "crm.search", "arguments": {"query": "ACME"}}' in only_query(recorded)
    assert f'<tool_result name="crm.search" id="{call.call_id}">\nACME Corp, Berlin\n</tool_result>' in \
        only_query(recorded)


def test_a_namespaced_tool_with_its_own_name_is_written_back_with_its_namespace(gateway):
    body = {"model": "demo-chat", "stream": True, "tools": [namespace("crm", "lookup")],
            "input": "Look up " + directive(answer='<tool_call>{"name": "lookup", "arguments": {}}</tool_call>')}
    events = sse_events(requests.post(gateway.base_url + "/responses", headers=HEADERS, json=body, stream=True,
                                      timeout=30))
    [done] = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert (done["type"], done["name"], done["namespace"]) == ("function_call", "lookup", "crm")
    assert events[-1]["response"]["output"] == [done]


def test_allowed_tools_offer_the_functions_and_namespaces_they_name():
    tools = [namespace("crm", "search", "lookup"), namespace("docs", "search"), WEATHER]

    def offered(mode, *entries):
        body = {"model": "m", "input": "x", "tools": tools,
                "tool_choice": {"type": "allowed_tools", "mode": mode, "tools": list(entries)}}
        request = parse_responses_request(body, RequestLimits()).chat.tools
        return request.choice, [tool.name for tool in request.tools]

    assert offered("required", {"type": "function", "name": "get_weather"}) == ("required", ["get_weather"])
    assert offered("auto", {"type": "namespace", "name": "crm"}, {"type": "web_search"}) == (
        "auto", ["crm.search", "lookup"])
    assert offered("auto", {"type": "function", "name": "search", "namespace": "docs"}) == ("auto", ["docs.search"])


@pytest.mark.parametrize(("fields", "param", "code"), [
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"name": ["a"]}]}},
     "tool_choice.tools[0].name", "invalid_type"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": 5}}, "tool_choice.tools", "invalid_type"),
    ({"tool_choice": {"type": "allowed_tools", "mode": "none", "tools": []}}, "tool_choice.mode", "invalid_value"),
    ({"tools": [{"type": "namespace", "name": "crm", "tools": 5}]}, "tools[0].tools", "invalid_type"),
    ({"tools": [{"type": "namespace", "tools": 5}]}, "tools[0].tools", "invalid_type"),
    ({"tools": [{"type": "namespace", "name": "c.r", "tools": []}]}, "tools[0].name", "invalid_value"),
    ({"tools": [namespace("crm", "search", "search")]}, "tools", "invalid_value"),
    ({"previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ({"conversation": "conv_123"}, "conversation", "unsupported_parameter"),
    ({"conversation": {"id": "conv_123"}}, "conversation", "unsupported_parameter"),
    ({"input": [{"role": "user", "content": "Hi"},
                {"type": "function_call", "call_id": "c1", "name": "search", "namespace": 3, "arguments": "{}"}]},
     "input[1].namespace", "invalid_type"),
])
def test_malformed_and_unsupported_fields_are_400s_naming_the_parameter(gateway, recorded, fields, param, code):
    response = requests.post(gateway.base_url + "/responses", headers=HEADERS, timeout=30,
                             json={"model": "demo-chat", "input": "Hi", **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert chat_requests(recorded) == []


def test_images_in_a_function_call_output_are_refused_not_dropped(gateway, recorded):
    pixel = "data:image/png;base64,iVBORw0KGgo="
    output = [{"type": "input_text", "text": "The screenshot:"}, {"type": "input_image", "image_url": pixel}]
    body = {"model": "demo-chat", "input": [
        {"role": "user", "content": "Show me"},
        {"type": "function_call", "call_id": "call_1", "name": "view_image", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": output}]}
    response = requests.post(gateway.base_url + "/responses", headers=HEADERS, timeout=30, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("input[2].output[1]", "unsupported_value")
    assert "input_image" in error["message"]
    assert chat_requests(recorded) == []
    # Text parts alone are the tool's result.
    body["input"][2]["output"] = output[:1] + [{"type": "input_text", "text": "a login form"}]
    assert requests.post(gateway.base_url + "/responses", headers=HEADERS, timeout=30, json=body).status_code == 200
    assert '<tool_result name="view_image" id="call_1">\nThe screenshot:\na login form\n</tool_result>' in \
        only_query(recorded)


@pytest.fixture(scope="module")
def late_gateway(start_gateway):
    """A gateway that commits before Dify's first event: FIRST_EVENT_WAIT=0 reads nothing first."""
    return start_gateway(FIRST_EVENT_WAIT="0")


def test_response_ids_carry_the_conversation_when_dify_answers_after_the_commit(late_gateway, recorded):
    client = openai.OpenAI(base_url=late_gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    first = client.responses.create(model="demo-chat", input="first turn")
    assert len(first.id) == len("resp_") + 64  # conversation and message, not a random id
    with requests.post(late_gateway.base_url + "/responses", headers=HEADERS, timeout=30, stream=True, json={
            "model": "demo-chat", "stream": True, "input": "second turn", "previous_response_id": first.id}) as reply:
        body = reply.text
    assert body.startswith(": ping\n\n")  # response.created waited for Dify's ids
    events = parse_events(body.splitlines())
    created, completed = events[0], events[-1]
    assert created["type"] == "response.created" and completed["type"] == "response.completed"
    assert created["response"]["id"] == completed["response"]["id"] != first.id
    assert len(created["response"]["id"]) == len("resp_") + 64
    third = client.responses.create(model="demo-chat", input="third turn",
                                    previous_response_id=completed["response"]["id"])
    assert third.output_text == "You said: third turn"
    conversation = {call["json"]["conversation_id"] for call in chat_requests(recorded)[1:]}
    assert len(conversation) == 1 and first.id[5:37] == conversation.pop().replace("-", "")


def test_codex_calls_a_function_of_a_namespace(gateway, recorded, tmp_path):
    """Codex offers its sub-agent functions in the namespace multi_agent_v1: a call of one goes
    back to Codex with its namespace, and Codex answers it."""
    (tmp_path / "config.toml").write_text(
        'model = "demo-chat"\nmodel_provider = "opendify"\n\n[model_providers.opendify]\nname = "OpenDify"\n'
        f'base_url = "{gateway.base_url}"\nenv_key = "OPENDIFY_KEY"\nwire_api = "responses"\n')
    close = '<tool_call>{"name": "close_agent", "arguments": {"target": "no-such-agent"}}</tool_call>'
    prompt = "Close the agent no-such-agent. " + directive(answer=close, after_tool_result="Closed.")
    result = subprocess.run([str(CODEX), "exec", "--skip-git-repo-check", prompt], cwd=tmp_path, timeout=240,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env={**os.environ, "CODEX_HOME": str(tmp_path), "OPENDIFY_KEY": CLIENT_KEY})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Closed."
    first, second = (call["json"]["query"] for call in chat_requests(recorded))
    assert "- close_agent(target: string)" in first
    assert '<tool_result name="close_agent"' in second


# -- pure: the output items and the stream's opening -----------------------------------------------

CONVERSATION, MESSAGE = "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11", "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44"
CARRIED_ID = "resp_3c1e0b6a5a1f4b7e9a430f6f0c2d9a11f2b8f2d61c0e4c5e8a9f2f6b1d7e3c44"
FALLBACK_ID = "resp_" + "0123456789abcdef" * 2


def test_a_replacement_is_the_whole_final_text_of_the_messages():
    output = ResponseOutput("ab" * 12, {"crm.search": ("crm", "search")})
    for kind, value in [(TEXT, "secret "), (TOOL_CALL, ToolCall("call_1", "crm.search", "{}")), (TEXT, "bad "),
                        (REASONING, "hmm"), (TEXT, "words"), (REPLACE, "[moderated]"), (END, ("stop", None))]:
        output.feed(kind, value)
    texts = [item["content"][0]["text"] if item["type"] != "function_call" else item["name"] for item in output.items]
    assert texts == ["", "search", "", "hmm", "[moderated]"]
    assert output.items[1]["namespace"] == "crm" and output.incomplete_reason == "content_filter"


def opened(out: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in out.decode().splitlines() if line.startswith("data: ")]


def test_a_stream_opens_once_dify_named_the_conversation():
    said: list[tuple[str, str]] = []
    head = ResponseHead(lambda: said[0] if said else None, FALLBACK_ID, 0, "m", {}, hold=True)
    [encoder] = ResponsesShape(head).encoders()
    assert encoder.opening() == b""  # nothing from Dify yet: the stream writes keep-alives
    assert encoder.render([(PING, None)]) == KEEPALIVE
    said.append((CONVERSATION, MESSAGE))
    events = opened(encoder.render([(PING, None)]))
    assert [event["type"] for event in events] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["id"] == CARRIED_ID and events[0]["sequence_number"] == 0
    assert opened(encoder.render([(TEXT, "Hi")]))[0]["type"] == "response.output_item.added"


@pytest.mark.parametrize("hold", [True, False])
def test_output_without_dify_ids_opens_the_stream_with_a_random_id(hold):
    head = ResponseHead(lambda: None, FALLBACK_ID, 0, "m", {}, hold=hold)
    [encoder] = ResponsesShape(head).encoders()
    events = opened(encoder.opening() + encoder.render([(TEXT, "Hi")]))
    assert [event["type"] for event in events[:3]] == ["response.created", "response.in_progress",
                                                       "response.output_item.added"]
    assert events[0]["response"]["id"] == FALLBACK_ID


def test_a_json_body_takes_its_id_once_the_answer_is_collected():
    said: list[tuple[str, str]] = []
    shape = ResponsesShape(ResponseHead(lambda: said[0] if said else None, FALLBACK_ID, 0, "m", {}, hold=True))
    [collector] = shape.collectors()
    collector.add(TEXT, "Hi")
    said.append((CONVERSATION, MESSAGE))
    collector.add(END, ("stop", None))
    assert shape.body([collector], {})["id"] == CARRIED_ID
