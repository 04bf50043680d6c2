"""Function calling and reasoning through the real gateway and the emulator, driven by real clients.

The emulator answers with the exact text a `@emulator {...}` directive asks for, so each test
plays the model: a `<tool_call>` block, a fenced json block, `<think>` reasoning, agent steps.
What Dify received is read back from the emulator's records.
"""

from __future__ import annotations

import functools
import json
import operator
import re
import subprocess
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from core.items import REASONING, ZERO_WIDTH_DIGITS, ZERO_WIDTH_SEPARATOR
from core.request.memory_modes.zero_width import decode_id
from core.response.reasoning import AgentThoughts
from core.response.translate import DifyEventTranslator
from tests.conftest import CLIENT_KEY
from tests.scenarios import chat_requests, directive, user_message

INVISIBLE_IDS = ZERO_WIDTH_DIGITS + ZERO_WIDTH_SEPARATOR  # what mode 2 appends to a reply
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER_FUNCTION = {"name": "get_weather", "description": "Weather forecast for a city.", "parameters": WEATHER_SCHEMA}
WEATHER = {"type": "function", "function": WEATHER_FUNCTION}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone.",
    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}

CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
TOOLS_HEADING = "\n\n# Tools\n\nYou can call these functions (`?`: optional parameter):\n"
WEATHER_LINES = "- get_weather(city: string, days?: integer): Weather forecast for a city.\n"
CALL_FORMAT = ('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n')
AUTO_RULE = "Call a function only when it helps; otherwise answer normally, without any <tool_call> block."
REQUIRED_RULE = "You must call at least one function in this answer."
AGENT_REASONING = "Calling tool current_time with {}\ncurrent_time returned: 2025-01-01 10:00:00\n"


def block(name: str, arguments: Any) -> str:
    """A call as the gateway teaches the app to write it."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


PARIS = block("get_weather", {"city": "Paris", "days": "3"})  # "3": the schema says integer
PARIS_ARGUMENTS = '{"city":"Paris","days":3}'
TOKYO = block("get_time", {"tz": "Asia/Tokyo"})
TWO_CALLS = f"Checking both.\n{PARIS}\n{TOKYO}"


def client_for(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


def langchain_for(gateway, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="demo-chat", base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30,
                      **kwargs)


def only_query(emulator) -> str:
    [call] = chat_requests(emulator)
    return call["json"]["query"]


# --- gateways with other settings, started on first use and stopped with the module ----------


@pytest.fixture(scope="module")
def gateway_with(start_gateway):
    """Gateways with other settings, one per distinct setting, stopped with the module."""
    started = {}

    def get(**env):
        key = tuple(sorted(env.items()))
        if key not in started:
            started[key] = start_gateway(**env)
        return started[key]

    yield get
    for other in started.values():
        other.stop()


@pytest.fixture
def zero_width_gateway(gateway_with):
    return gateway_with(CONVERSATION_MEMORY_MODE="2")


@pytest.fixture
def think_content_gateway(gateway_with):
    return gateway_with(THINK_TAGS="content")


@pytest.fixture
def agent_tool_calls_gateway(gateway_with):
    return gateway_with(AGENT_THOUGHTS="tool_calls")


@pytest.fixture
def agent_hidden_gateway(gateway_with):
    return gateway_with(AGENT_THOUGHTS="hidden")


# --- raw SSE: every line and every delta checked ---------------------------------------------


def sse_events(gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed answer, after checking the SSE framing."""
    with requests.post(gateway.base_url + "/chat/completions", json={**body, "stream": True}, stream=True,
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode() for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = []
    for line in lines[:-1]:
        if line.startswith(":"):  # keep-alive comment
            continue
        assert line.startswith("data: {")
        events.append(json.loads(line[len("data: "):]))
    return events


class Replay:
    """A streamed choice replayed delta by delta, enforcing docs/clients.md 2.2 and rule 7."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, str]] = []
        self.functions: list[dict[str, str]] = []  # legacy function_call deltas, as sent
        self.order: list[str] = []  # delta kinds in order, adjacent repeats merged
        choices = [event["choices"][0] for event in events]
        assert {(event["id"], event["created"], event["object"]) for event in events} == {
            (events[0]["id"], events[0]["created"], "chat.completion.chunk")}
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert choices[-1]["delta"] == {} and choices[-1]["finish_reason"] is not None
        assert all(choice["finish_reason"] is None and choice["index"] == 0 for choice in choices[:-1])
        self.finish_reason = choices[-1]["finish_reason"]
        for choice in choices[1:-1]:
            [(kind, value)] = choice["delta"].items()  # one thing per delta, nothing else
            if not self.order or self.order[-1] != kind:
                self.order.append(kind)
            if kind == "content":
                self.content.append(value)
            elif kind == "reasoning_content":
                self.reasoning.append(value)
            elif kind == "tool_calls":
                self._tool_call_delta(value)
            elif kind == "function_call":
                self.functions.append(value)
            else:
                pytest.fail(f"unexpected delta {choice['delta']}")

    def _tool_call_delta(self, value: list[dict[str, Any]]) -> None:
        [call] = value  # NextChat reads only tool_calls[0]: one call per delta
        if call["index"] == len(self.calls):  # the first delta of the next call
            assert set(call) == {"index", "id", "type", "function"} and call["type"] == "function"
            assert set(call["function"]) == {"name", "arguments"} and call["function"]["arguments"] == ""
            assert call["id"].startswith("call_")  # gateway ids, or call_<thought id>_<n> for agent tools
            self.calls.append({"id": call["id"], "name": call["function"]["name"], "arguments": ""})
        else:  # later deltas: only the index of the current call and an arguments piece
            assert call["index"] == len(self.calls) - 1
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            self.calls[-1]["arguments"] += call["function"]["arguments"]

    @property
    def text(self) -> str:
        return "".join(self.content)


def streamed(gateway, answer: str | None = None, chunks: list[str] | None = None, **body: Any) -> Replay:
    scenario = {"chunks": chunks} if chunks is not None else {"answer": answer}
    body.setdefault("model", "demo-chat")
    body.setdefault("messages", user_message("Weather?", **scenario))
    return Replay(sse_events(gateway, body))


# --- 1. tools, non-streaming, openai SDK ----------------------------------------------------------


def test_call_after_text_becomes_a_tool_call_with_coerced_arguments(client, recorded):
    messages = user_message("Weather in Paris for 3 days?", answer=f"Let me check.\n{PARIS}")
    completion = client.chat.completions.create(model="demo-chat", messages=messages, tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check.\n"
    [call] = choice.message.tool_calls
    assert CALL_ID.fullmatch(call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == PARIS_ARGUMENTS  # a JSON string, "3" coerced to 3
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 3}
    # Dify got the question, then the tools and how to call them.
    query = only_query(recorded)
    question, instructions = query.split(TOOLS_HEADING)
    assert question == messages[0]["content"]
    assert instructions == (WEATHER_LINES + "\nFor each function call, write a JSON object with the function name and "
                            "arguments inside <tool_call></tool_call> tags:\n" + CALL_FORMAT
                            + "To make several calls, write one block per call.\n"
                            "Results come back in a later message inside <tool_result> tags; never write them "
                            "yourself.\n" + AUTO_RULE)


def test_answer_that_is_only_a_call_has_null_content(client):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Weather?", answer=PARIS))
    message = completion.choices[0].message
    assert message.content is None and completion.choices[0].finish_reason == "tool_calls"
    assert [(call.function.name, call.function.arguments) for call in message.tool_calls] == [
        ("get_weather", PARIS_ARGUMENTS)]


def test_several_calls_in_one_answer(client):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER, TIME],
                                                messages=user_message("Both?", answer=TWO_CALLS))
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking both.\n\n"
    assert [(call.type, call.function.name, call.function.arguments) for call in message.tool_calls] == [
        ("function", "get_weather", PARIS_ARGUMENTS), ("function", "get_time", '{"tz":"Asia/Tokyo"}')]
    ids = [call.id for call in message.tool_calls]
    assert len(set(ids)) == 2 and all(CALL_ID.fullmatch(call_id) for call_id in ids)


def test_text_after_the_call_stays_content(client):
    answer = f"Let me check.\n{PARIS}\nOne moment."
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Weather?", answer=answer))
    assert completion.choices[0].message.content == "Let me check.\n\nOne moment."
    assert len(completion.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("answer", [
    pytest.param('Sure.\n```json\n{"tool_calls": [{"id": "x1", "type": "function", "function": {"name": "get_weather", '
                 '"arguments": "{\\"city\\": \\"Paris\\", \\"days\\": \\"3\\"}"}}]}\n```', id="openai-shape-fence"),
    pytest.param('Sure.\n```json\n{"function_call": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}'
                 "\n```", id="function-call-fence"),
    pytest.param('Sure.\n```\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0}}\n```',
                 id="unlabelled-fence"),
])
def test_fenced_json_blocks_are_calls(client, answer):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Weather?", answer=answer))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Sure.\n"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == PARIS_ARGUMENTS
    assert CALL_ID.fullmatch(call.id)  # the gateway's id, not the one the model made up


def test_call_to_an_unknown_function_stays_text(client):
    answer = 'I will launch it.\n<tool_call>\n{"name": "launch_rocket", "arguments": {}}\n</tool_call>'
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Launch?", answer=answer))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content == answer


@pytest.mark.parametrize("fields", [{"tools": [WEATHER], "tool_choice": "none"},
                                    {"functions": [WEATHER_FUNCTION], "function_call": "none"}],
                         ids=["tool_choice", "function_call"])
def test_choice_none_sends_no_instructions_and_returns_text(client, recorded, fields):
    messages = user_message("Weather?", answer=PARIS)
    completion = client.chat.completions.create(model="demo-chat", messages=messages, **fields)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.function_call is None
    assert choice.message.content == PARIS  # not parsed: no function may be called
    assert only_query(recorded) == messages[0]["content"]


def test_named_tool_choice_offers_only_that_function_and_requires_it(client, recorded):
    messages = user_message("Time in Tokyo?", answer=TOKYO)
    completion = client.chat.completions.create(
        model="demo-chat", tools=[WEATHER, TIME], messages=messages,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    [call] = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_time", '{"tz":"Asia/Tokyo"}')
    query = only_query(recorded)
    assert query.endswith("\nYou must call the function get_time in this answer.")
    assert "- get_time(tz: string): Current time in a time zone.\n" in query and "get_weather" not in query


@pytest.mark.parametrize(("mode", "rule"), [("required", REQUIRED_RULE), ("auto", AUTO_RULE)])
def test_allowed_tools_choice_offers_only_the_allowed_functions(client, recorded, mode, rule):
    # openai-python's ChatCompletionAllowedToolChoiceParam
    choice = {"type": "allowed_tools", "allowed_tools": {
        "mode": mode, "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER, TIME], tool_choice=choice,
                                                messages=user_message("Weather?", answer=PARIS))
    [call] = completion.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", PARIS_ARGUMENTS)
    query = only_query(recorded)
    assert query.endswith("\n" + rule) and WEATHER_LINES in query and "get_time" not in query


def test_required_tool_choice_puts_the_rule_in_the_query(client, recorded):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER, TIME], tool_choice="required",
                                                messages=user_message("Weather?", answer=PARIS))
    assert completion.choices[0].finish_reason == "tool_calls"
    query = only_query(recorded)
    assert query.endswith("\n" + REQUIRED_RULE) and AUTO_RULE not in query
    assert WEATHER_LINES in query and "- get_time(tz: string): Current time in a time zone.\n" in query


def test_think_block_before_a_call_is_reasoning(client):
    answer = f"<think>I need the weather.</think>\n{PARIS}"
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Weather?", answer=answer))
    message = completion.choices[0].message
    assert message.reasoning_content == "I need the weather."
    assert message.content is None and message.tool_calls[0].function.arguments == PARIS_ARGUMENTS


def test_call_written_inside_the_reasoning_is_not_a_call(client):
    answer = f"<think>I could write {PARIS}</think>\n\nNo call needed."
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER],
                                                messages=user_message("Weather?", answer=answer))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.reasoning_content == f"I could write {PARIS}"
    assert choice.message.content == "No call needed."


def test_n_choices_each_get_their_own_calls(client):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER], n=2,
                                                messages=user_message("Weather?", answer=PARIS))
    assert [choice.index for choice in completion.choices] == [0, 1]
    calls = [choice.message.tool_calls[0] for choice in completion.choices]
    assert [call.function.arguments for call in calls] == [PARIS_ARGUMENTS] * 2
    assert calls[0].id != calls[1].id


def test_parallel_tool_calls_false_returns_at_most_one_call(client, recorded):
    completion = client.chat.completions.create(model="demo-chat", tools=[WEATHER, TIME], parallel_tool_calls=False,
                                                messages=user_message("Both?", answer=TWO_CALLS))
    assert "Make at most one call per answer." in only_query(recorded)
    assert [call.function.name for call in completion.choices[0].message.tool_calls] == ["get_weather"]


# --- 2. streaming tool calls, raw SSE (docs/clients.md rule 7) -----------------------------------------

SPLIT_CALL = ["Let me ", "check.\n<to", "ol_call>\n{\"na", "me\": \"get_wea", "ther\", \"argu", "ments\": {\"ci",
              "ty\": \"Paris\", \"days\": \"3", "\"}}\n</tool", "_call>"]


def test_streamed_call_follows_rule_7(gateway):
    replay = streamed(gateway, f"Let me check.\n{PARIS}", tools=[WEATHER])
    assert replay.order == ["content", "tool_calls"]
    assert replay.text == "Let me check.\n"
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [("get_weather", PARIS_ARGUMENTS)]
    assert CALL_ID.fullmatch(replay.calls[0]["id"])
    assert replay.finish_reason == "tool_calls"


def test_streamed_call_split_across_many_small_deltas_never_leaks(gateway):
    assert "".join(SPLIT_CALL) == f"Let me check.\n{PARIS}"
    replay = streamed(gateway, chunks=SPLIT_CALL, tools=[WEATHER])
    assert replay.text == "Let me check.\n"
    assert not any("<" in piece or "{" in piece for piece in replay.content)
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [("get_weather", PARIS_ARGUMENTS)]
    assert replay.finish_reason == "tool_calls"


def test_two_streamed_calls_get_indexes_0_and_1(gateway):
    replay = streamed(gateway, TWO_CALLS, tools=[WEATHER, TIME])  # Replay checks the index of every delta
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [
        ("get_weather", PARIS_ARGUMENTS), ("get_time", '{"tz":"Asia/Tokyo"}')]
    assert replay.calls[0]["id"] != replay.calls[1]["id"]
    assert replay.text == "Checking both.\n\n" and replay.finish_reason == "tool_calls"


def test_streamed_fenced_block_split_across_deltas(gateway):
    chunks = ["Sure:\n", "``", "`js", 'on\n{"tool_calls": [{"type": "function", "function": {"name": "get_w',
              'eather", "arguments": {"city": "Paris", "days": 3}}}]}\n``', "`", "\nDone."]
    replay = streamed(gateway, chunks=chunks, tools=[WEATHER])
    assert replay.order == ["content", "tool_calls", "content"]
    assert replay.text == "Sure:\n\nDone."
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [("get_weather", PARIS_ARGUMENTS)]


def test_text_that_only_looks_like_a_call_streams_unchanged(gateway):
    chunks = ["Code:\n", "```py", "thon\nprint(1 < 2)\n", "```\nsee <to", "do> and `x`"]
    replay = streamed(gateway, chunks=chunks, tools=[WEATHER])
    assert replay.text == "".join(chunks) and replay.calls == [] and replay.finish_reason == "stop"


def test_unclosed_block_at_the_end_of_the_answer_is_still_a_call(gateway):
    answer = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool'
    replay = streamed(gateway, chunks=[answer[:20], answer[20:]], tools=[WEATHER])
    assert replay.text == "Checking.\n" and replay.finish_reason == "tool_calls"
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [("get_weather", PARIS_ARGUMENTS)]


def test_call_cut_off_by_an_upstream_error_is_not_sent_as_a_call(gateway):
    chunks = ["Hi ", '<tool_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>']
    events = sse_events(gateway, {"model": "demo-chat", "tools": [WEATHER],
                                  "messages": user_message("Weather?", chunks=chunks, error_after=2)})
    assert events[-1]["error"]["code"] == "completion_request_error"
    deltas = [event["choices"][0]["delta"] for event in events[:-1]]
    # The unfinished block goes out as text, never completed into a call: NextChat ignores
    # error events, so a call streamed here would run with arguments the model never wrote.
    assert "".join(delta.get("content") or "" for delta in deltas).startswith("Hi <tool_call>")
    assert not any("tool_calls" in delta for delta in deltas)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sets(st.integers(1, len(TWO_CALLS) - 1), max_size=40))
def test_any_split_of_the_answer_gives_the_same_calls(gateway, cuts):
    points = [0, *sorted(cuts), len(TWO_CALLS)]
    chunks = [TWO_CALLS[start:end] for start, end in zip(points, points[1:], strict=False)]
    replay = streamed(gateway, chunks=chunks, tools=[WEATHER, TIME])
    assert replay.text == "Checking both.\n\n"
    assert not any("<" in piece or "tool_call" in piece for piece in replay.content)
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [
        ("get_weather", PARIS_ARGUMENTS), ("get_time", '{"tz":"Asia/Tokyo"}')]
    assert replay.finish_reason == "tool_calls"


# --- 3. the openai stream helper and LangChain -------------------------------------------------


def test_openai_stream_helper_builds_the_calls_once(client):
    with client.chat.completions.stream(model="demo-chat", tools=[WEATHER, TIME],
                                        messages=user_message("Both?", answer=TWO_CALLS)) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking both.\n\n"
    calls = choice.message.tool_calls
    assert [(call.type, call.function.name, call.function.arguments) for call in calls] == [
        ("function", "get_weather", PARIS_ARGUMENTS), ("function", "get_time", '{"tz":"Asia/Tokyo"}')]
    assert all(CALL_ID.fullmatch(call.id) for call in calls)  # not concatenated from repeated ids
    assert events.count("tool_calls.function.arguments.done") == 2


class GetWeather(pydantic.BaseModel):
    city: str
    days: int


def test_openai_parse_with_a_strict_pydantic_tool(client):
    strict_tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    completion = client.chat.completions.parse(model="demo-chat", tools=[strict_tool],
                                               messages=user_message("Weather?", answer=PARIS))
    [call] = completion.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Paris", days=3)
    with client.chat.completions.stream(model="demo-chat", tools=[strict_tool], stream_options={"include_usage": True},
                                        messages=user_message("Weather?", chunks=SPLIT_CALL)) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.parsed_arguments == GetWeather(city="Paris", days=3)
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens > 0


@tool
def get_weather(city: str, days: int = 1) -> str:
    """Weather forecast for a city."""
    # The emulator takes its next answer from a directive anywhere in the query: the tool
    # result is where the app's final answer is chosen.
    return f"Sunny in {city} for {days} days.\n" + directive(answer=f"It will be sunny in {city}.")


def test_langchain_bind_tools_invoke_parses_the_call(gateway):
    llm = langchain_for(gateway).bind_tools([get_weather])
    message = llm.invoke([HumanMessage(user_message("Weather in Paris?", answer=PARIS)[0]["content"])])
    assert message.invalid_tool_calls == []
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris", "days": 3}
    assert CALL_ID.fullmatch(call["id"])
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_langchain_stream_sums_to_one_call(gateway):
    llm = langchain_for(gateway).bind_tools([get_weather])
    question = user_message("Weather in Paris?", chunks=SPLIT_CALL)[0]["content"]
    chunks = list(llm.stream([HumanMessage(question)]))
    total = functools.reduce(operator.add, chunks)
    assert total.content == "Let me check.\n"
    assert total.invalid_tool_calls == []
    [call] = total.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris", "days": 3}  # not "get_weatherget_…"
    assert len(total.tool_call_chunks) == 1 and CALL_ID.fullmatch(total.tool_call_chunks[0]["id"])


# --- 4. tool results back to the app --------------------------------------------------------------


def result_block(name: str, call_id: str | None, content: str) -> str:
    call_id_attribute = f' id="{call_id}"' if call_id else ""
    return f'<tool_result name="{name}"{call_id_attribute}>\n{content}\n</tool_result>'


@pytest.mark.parametrize("variant", ["tool-message", "content-parts", "function-message"])
def test_tool_result_round_trip_stateless(client, recorded, variant):
    """The history NextChat or LangChain's agent loop sends after running the tool (mode 0)."""
    result = "Sunny, 21 C\n" + directive(answer="It is sunny in Paris.")
    legacy = variant == "function-message"
    if legacy:
        assistant = {"role": "assistant", "content": None,
                     "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        tool_turn = {"role": "function", "name": "get_weather", "content": result}
    else:
        assistant = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
        content = result if variant == "tool-message" else [{"type": "text", "text": "Sunny, 21 C"},
                                                             {"type": "text", "text": directive(
                                                                 answer="It is sunny in Paris.")}]
        tool_turn = {"role": "tool", "tool_call_id": "call_abc123", "content": content}
    messages = [{"role": "system", "content": "You are a weather bot."},
                {"role": "user", "content": "Weather in Paris?"}, assistant, tool_turn]
    tools = {"functions": [WEATHER_FUNCTION]} if legacy else {"tools": [WEATHER]}
    completion = client.chat.completions.create(model="demo-chat", messages=messages, **tools)
    choice = completion.choices[0]
    assert choice.message.content == "It is sunny in Paris." and choice.finish_reason == "stop"
    assert choice.message.tool_calls is None and choice.message.function_call is None
    query, instructions = only_query(recorded).split(TOOLS_HEADING)
    assert query == ("You are a weather bot.\n\nWeather in Paris?\n\nAssistant:\n"
                     + block("get_weather", {"city": "Paris"}) + "\n\n"
                     + result_block("get_weather", None if legacy else "call_abc123", result))
    assert instructions.startswith(WEATHER_LINES)


def test_tool_result_round_trip_zero_width_memory(zero_width_gateway, recorded):
    """Mode 2: the first reply carries the conversation id; the result continues that conversation."""
    client = client_for(zero_width_gateway)
    question = user_message("Weather in Paris?", answer=PARIS)
    first = client.chat.completions.create(model="demo-chat", messages=question, tools=[WEATHER])
    message = first.choices[0].message
    [call] = message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls" and call.function.arguments == PARIS_ARGUMENTS
    conversation_id = decode_id(message.content)  # the content is only the invisible ids
    assert conversation_id and message.content.strip(INVISIBLE_IDS) == ""

    result = "Sunny, 21 C\n" + directive(answer="It is sunny in Paris.")
    second = client.chat.completions.create(model="demo-chat", tools=[WEATHER], messages=[
        *question, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": result}])
    # Every reply carries the ids (ZERO_WIDTH_ID=every); the conversation goes on.
    assert second.choices[0].message.content.rstrip(INVISIBLE_IDS) == "It is sunny in Paris."
    assert decode_id(second.choices[0].message.content) == conversation_id
    assert second.choices[0].finish_reason == "stop"
    first_call, second_call = chat_requests(recorded)
    assert first_call["json"]["conversation_id"] in ("", None)
    assert second_call["json"]["conversation_id"] == conversation_id
    query, instructions = second_call["json"]["query"].split(TOOLS_HEADING)
    assert query == result_block("get_weather", call.id, result)  # Dify already holds the question and the call
    assert instructions.startswith(WEATHER_LINES)


def test_langchain_tool_calling_loop_end_to_end(gateway, recorded):
    llm = langchain_for(gateway).bind_tools([get_weather])
    history = [HumanMessage(user_message("Weather in Paris?", answer=PARIS)[0]["content"])]
    reply = llm.invoke(history)
    history.append(reply)
    for call in reply.tool_calls:
        history.append(get_weather.invoke(call))  # a ToolMessage with the call's id
    assert isinstance(history[-1], ToolMessage)
    final = llm.invoke(history)
    assert final.content == "It will be sunny in Paris." and final.tool_calls == []
    query = chat_requests(recorded)[-1]["json"]["query"].split(TOOLS_HEADING)[0]
    assert query.endswith(result_block("get_weather", reply.tool_calls[0]["id"], history[-1].content))
    assert "\n\nAssistant:\n" + block("get_weather", {"city": "Paris", "days": 3}) + "\n\n<tool_result" in query


def test_langchain_streaming_loop_with_zero_width_memory(zero_width_gateway, recorded):
    llm = langchain_for(zero_width_gateway).bind_tools([get_weather])
    history = [HumanMessage(user_message("Weather in Paris?", answer=PARIS)[0]["content"])]
    reply = functools.reduce(operator.add, llm.stream(history))
    [call] = reply.tool_calls
    assert call["args"] == {"city": "Paris", "days": 3}
    conversation_id = decode_id(reply.content)  # the invisible id rides in the summed content
    history += [reply, get_weather.invoke(call)]
    final = functools.reduce(operator.add, llm.stream(history))
    assert final.content.rstrip(INVISIBLE_IDS) == "It will be sunny in Paris." and final.tool_calls == []
    assert decode_id(final.content) == conversation_id
    second = chat_requests(recorded)[1]["json"]
    assert second["conversation_id"] == conversation_id
    assert second["query"].split(TOOLS_HEADING)[0] == result_block("get_weather", call["id"], history[-1].content)


# --- 5. legacy functions + function_call ---------------------------------------------------------


def test_functions_give_a_function_call(client, recorded):
    completion = client.chat.completions.create(model="demo-chat", functions=[WEATHER_FUNCTION],
                                                messages=user_message("Weather?", answer=PARIS))
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    assert choice.message.function_call.arguments == PARIS_ARGUMENTS
    assert choice.message.tool_calls is None and choice.message.content is None
    # One call per answer: legacy function_call holds a single call.
    assert "Make at most one call per answer." in only_query(recorded)


def test_functions_keep_only_the_first_of_several_calls(client):
    completion = client.chat.completions.create(model="demo-chat", functions=[WEATHER_FUNCTION, TIME["function"]],
                                                messages=user_message("Both?", answer=TWO_CALLS))
    function_call = completion.choices[0].message.function_call
    assert (function_call.name, function_call.arguments) == ("get_weather", PARIS_ARGUMENTS)


def test_functions_streamed_with_the_sdk_and_raw(client, gateway):
    chunks = list(client.chat.completions.create(model="demo-chat", functions=[WEATHER_FUNCTION], stream=True,
                                                 function_call="auto", messages=user_message("W?", chunks=SPLIT_CALL)))
    calls = [chunk.choices[0].delta.function_call for chunk in chunks if chunk.choices[0].delta.function_call]
    assert [(call.name, call.arguments) for call in calls] == [("get_weather", ""), (None, PARIS_ARGUMENTS)]
    assert chunks[-1].choices[0].finish_reason == "function_call"
    replay = streamed(gateway, chunks=SPLIT_CALL, functions=[WEATHER_FUNCTION])
    assert replay.functions == [{"name": "get_weather", "arguments": ""}, {"arguments": PARIS_ARGUMENTS}]
    assert replay.text == "Let me check.\n" and replay.calls == [] and replay.finish_reason == "function_call"


def test_legacy_openai_028_functions(legacy_python, gateway):
    script = Path(__file__).with_name("legacy_functions_client.py")
    result = subprocess.run([str(legacy_python), str(script), gateway.base_url, CLIENT_KEY, directive(answer=PARIS)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["finish_reason"] == "function_call" and results["content"] is None
    assert results["function_call"] == {"name": "get_weather", "arguments": PARIS_ARGUMENTS}
    assert results["stream_deltas"] == [{"name": "get_weather", "arguments": ""}, {"arguments": PARIS_ARGUMENTS}]
    assert results["stream_finish_reasons"][-1] == "function_call"
    assert set(results["stream_finish_reasons"][:-1]) == {None}
    assert results["bad_function_call"] == [400, "function_call"]


# --- 6. reasoning -----------------------------------------------------------------------------

THINK_ANSWER = "<think>plan</think>\n\nAnswer."
DETAILS_ANSWER = '<details style="color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;" open> ' \
                 "<summary> Thinking... </summary>plan</details>\n\nAnswer."


@pytest.mark.parametrize("answer", [THINK_ANSWER, DETAILS_ANSWER], ids=["think", "details"])
def test_think_block_becomes_reasoning_content(client, answer):
    completion = client.chat.completions.create(model="demo-chat", messages=user_message("Q?", answer=answer))
    message = completion.choices[0].message
    assert message.reasoning_content == "plan" and message.content == "Answer."
    assert completion.choices[0].finish_reason == "stop"


def test_answer_without_reasoning_has_no_reasoning_content(client):
    completion = client.chat.completions.create(model="demo-chat", messages=user_message("Q?", answer="Plain."))
    assert completion.choices[0].message.content == "Plain."
    assert "reasoning_content" not in completion.choices[0].message.model_dump()


@pytest.mark.parametrize("chunks", [
    pytest.param(["<think>", "pl", "an", "</think>", "\n\n", "Ans", "wer."], id="tags-whole"),
    pytest.param(["<th", "ink>pl", "an</th", "ink>\n", "\nAns", "wer."], id="tags-split"),
    pytest.param(["<details open><sum", "mary> Thinking... </summary>pl", "an</deta", "ils>\n\nAns", "wer."],
                 id="details-split"),
])
def test_streamed_reasoning_then_content(gateway, chunks):
    replay = streamed(gateway, chunks=chunks)
    assert replay.order == ["reasoning_content", "content"]
    assert "".join(replay.reasoning) == "plan" and replay.text == "Answer."
    assert replay.finish_reason == "stop"


def test_streamed_reasoning_with_the_openai_sdk(client):
    chunks = list(client.chat.completions.create(model="demo-chat", stream=True,
                                                 messages=user_message("Q?", chunks=["<th", "ink>pl", "an</th",
                                                                                     "ink>\n\nAns", "wer."])))
    reasoning = "".join(getattr(chunk.choices[0].delta, "reasoning_content", None) or "" for chunk in chunks)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert (reasoning, content) == ("plan", "Answer.")


def test_think_tags_kept_in_content_as_their_own_chunks(think_content_gateway):
    replay = streamed(think_content_gateway, chunks=["<th", "ink>pl", "an</th", "ink>\n\nAns", "wer."])
    assert replay.reasoning == []
    assert replay.content[0] == "<think>" and "</think>" in replay.content
    assert "".join(replay.content[1:replay.content.index("</think>")]) == "plan"
    assert "".join(replay.content) == "<think>plan</think>Answer."
    completion = client_for(think_content_gateway).chat.completions.create(
        model="demo-chat", messages=user_message("Q?", answer=THINK_ANSWER))
    message = completion.choices[0].message
    assert message.content == "<think>plan</think>Answer." and "reasoning_content" not in message.model_dump()


def test_agent_thoughts_default_to_reasoning(client, gateway):
    completion = client.chat.completions.create(model="demo-agent", messages=user_message("what time is it"))
    message = completion.choices[0].message
    assert message.reasoning_content == AGENT_REASONING
    assert message.content == "You said: what time is it" and message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    replay = streamed(gateway, model="demo-agent", messages=user_message("what time is it"))
    assert replay.order == ["reasoning_content", "content"]
    assert "".join(replay.reasoning) == AGENT_REASONING and replay.text == "You said: what time is it"


AGENT_STEPS = [{"thought": "I need the time.\n", "tool": "current_time", "tool_input": {"tz": "UTC"},
                "observation": "10:00"},
               {"thought": "Now the date.\n", "tool": "current_date", "tool_input": {}, "observation": "2025-01-01"}]
STEPS_REASONING = ('Calling tool current_time with {"tz": "UTC"}\ncurrent_time returned: 10:00\n'
                   "Calling tool current_date with {}\ncurrent_date returned: 2025-01-01\n")


def test_agent_text_before_a_tool_call_is_answer_text_once(client, gateway):
    """A function-calling agent streams its text before each tool call as agent_message, and the
    iteration's thought repeats it (docs/dify.md 4.6): the client sees it once, as content."""
    messages = user_message("when?", agent_steps=AGENT_STEPS, answer="It is 10:00 on 2025-01-01.")
    message = client.chat.completions.create(model="demo-agent", messages=messages).choices[0].message
    assert message.content == "I need the time.\nNow the date.\nIt is 10:00 on 2025-01-01."
    assert message.reasoning_content == STEPS_REASONING
    replay = streamed(gateway, model="demo-agent", messages=messages)
    assert replay.text == message.content and "".join(replay.reasoning) == STEPS_REASONING


def test_agent_thoughts_that_were_not_streamed_are_reasoning():
    """A ReAct agent's thought, or one whose text never streamed, is shown as reasoning."""
    translator = DifyEventTranslator("agent-chat", AgentThoughts())
    thought = {"event": "agent_thought", "id": "t1", "position": 1, "thought": "Let me look.", "tool": "search",
               "tool_input": '{"search": {"q": "x"}}', "observation": ""}
    assert translator.feed({**thought, "thought": "", "tool": "", "tool_input": ""}) == []
    assert translator.feed(thought) == [(REASONING, 'Let me look.\nCalling tool search with {"q": "x"}\n')]


def test_agent_thoughts_as_tool_calls(agent_tool_calls_gateway):
    completion = client_for(agent_tool_calls_gateway).chat.completions.create(
        model="demo-agent", messages=user_message("what time is it"))
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"  # the tool already ran on Dify: nothing for the client to do
    assert choice.message.content == "You said: what time is it"
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("current_time", "{}")
    assert choice.message.reasoning_content == "current_time returned: 2025-01-01 10:00:00\n"
    replay = streamed(agent_tool_calls_gateway, model="demo-agent", messages=user_message("what time is it"))
    assert replay.order == ["tool_calls", "reasoning_content", "content"]
    assert [(call["name"], call["arguments"]) for call in replay.calls] == [("current_time", "{}")]
    assert replay.text == "You said: what time is it" and replay.finish_reason == "stop"


def test_agent_thoughts_hidden(agent_hidden_gateway):
    completion = client_for(agent_hidden_gateway).chat.completions.create(
        model="demo-agent", messages=user_message("what time is it"))
    message = completion.choices[0].message
    assert message.content == "You said: what time is it" and message.tool_calls is None
    assert "reasoning_content" not in message.model_dump()
    replay = streamed(agent_hidden_gateway, model="demo-agent", messages=user_message("what time is it"))
    assert replay.order == ["content"] and replay.text == "You said: what time is it"


# --- 7. bad tool definitions ------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "bad name!"}}]}, "tools[1].function.name"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]},
     "tools[0].function.parameters"),
    ({"tools": {"type": "function", "function": {"name": "f"}}}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"functions": [{"description": "no name"}]}, "functions[0].name"),
    ({"functions": [WEATHER_FUNCTION], "function_call": {"name": "get_time"}}, "function_call"),
])
def test_bad_tool_definitions_are_400_with_param(http, recorded, fields, param):
    response = http("POST", "/v1/chat/completions",
                    json={"model": "demo-chat", "messages": user_message("hi"), **fields})
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    assert chat_requests(recorded) == []  # refused before Dify was called


def test_bad_tool_definition_with_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo-chat", messages=user_message("hi"), tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert caught.value.status_code == 400 and caught.value.body["param"] == "tool_choice"
    assert caught.value.code == "invalid_value"
