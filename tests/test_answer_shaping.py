"""Stop sequences, JSON answers, tool-made files, chatflow progress and failures."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from core.errors import OpenAIError
from core.items import END, ERROR, TEXT
from core.request.tools import parse_tool_request
from core.response.pipeline import OutputPipeline
from core.response.reasoning import ThinkSplitter
from core.response.stages import JsonAnswer, StopSequences, json_answer
from core.response.tool_parser import ToolCallParser
from tests.conftest import CLIENT_KEY
from tests.raw_dify import sse_events
from tests.scenarios import EVENT_WAIT, running_dify_answer, user_message
from tests.test_http_surface import assert_openai_error, read_sse


def stream_text(client, **kwargs) -> tuple[str, str]:
    text, finish = "", None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_stop_sequence_split_across_pieces_unit():
    stage = StopSequences(["END", "\n\n"])
    out = stage.feed("abc E") + stage.feed("N") + stage.feed("D tail")
    assert out == [(TEXT, "abc ")] and stage.hit and stage.flush() == []
    near_miss = StopSequences(["END"])
    assert near_miss.feed("xEN") == [(TEXT, "x")] and near_miss.flush() == [(TEXT, "EN")]


@pytest.fixture(scope="module")
def raw_client(raw_dify, start_gateway):
    gateway = start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw")
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_answer_and_stop_dify(raw_dify, raw_client, stream):
    """The rest of the Dify run is not needed: its own task is stopped, with the run's user.

    The raw fake Dify names the task (the emulator's task ids are random and gone once the
    task ends) and keeps the run going after the words, so only the stop ends it."""
    raw_dify.answer, task_id = running_dify_answer(["one ", "two ", "th", "ree ", "four ", "five"])
    raw_dify.pause = 0.03  # each word in its own read: the stop sequence arrives in two pieces
    before = len(raw_dify.calls)
    messages = user_message("count")
    if stream:
        text, finish = stream_text(raw_client, model="raw-chat", messages=messages, stop=["three", "zzz"])
    else:
        choice = raw_client.chat.completions.create(model="raw-chat", messages=messages, stop="three").choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert (text, finish) == ("one two ", "stop")
    stopped = raw_dify.wait_for(lambda calls: any(call.path.endswith("/stop") for call in calls[before:]), EVENT_WAIT)
    assert stopped, f"no stop call within {EVENT_WAIT} s"
    run, stop = [call for call in raw_dify.calls[before:] if call.path.startswith("/v1/chat-messages")]
    assert (run.method, run.path, stop.method, stop.path, stop.key) == (
        "POST", "/v1/chat-messages", "POST", f"/v1/chat-messages/{task_id}/stop", "app-raw")
    assert json.loads(stop.body) == {"user": json.loads(run.body)["user"]}


def whole_answer(words: list[str]) -> bytes:
    """For `RawDify.answer`: a finished chat stream of `words`, framed by Content-Length."""
    body = sse_events(words)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def test_the_stages_give_out_what_they_held_in_order_unit():
    """At the end each stage first takes what the stages before it gave out, then gives out
    what it holds: nothing is lost in a stage flushed before it got it, nothing reordered."""
    tools = parse_tool_request({"tools": [WEATHER_TOOL]})

    def answer(stages, *pieces):
        pipeline = OutputPipeline(stages)
        items = []
        for piece in pieces:
            items += pipeline.process([(TEXT, piece)])
        items += pipeline.process([(END, ("stop", None))])
        return "".join(value for kind, value in items if kind == TEXT), items[-1]

    fenced = '```json\n{"city": "Paris", "temp": 21}\n'
    assert answer([ThinkSplitter(), ToolCallParser(tools), JsonAnswer()], fenced) == (
        '{"city": "Paris", "temp": 21}', (END, ("stop", None)))
    assert answer([ThinkSplitter(), ToolCallParser(tools), StopSequences(["```"])], "Run `ls`")[0] == "Run `ls`"
    assert answer([ThinkSplitter(), StopSequences(["END"])], "a EN", "<")[0] == "a EN<"
    # The same on the error path: the held text goes out, in order, before the error.
    pipeline = OutputPipeline([ThinkSplitter(), StopSequences(["END"])])
    error = OpenAIError(502, "boom")
    items = pipeline.process([(TEXT, "a EN")]) + pipeline.process([(TEXT, "<"), (ERROR, error)])
    assert items == [(TEXT, "a "), (TEXT, "EN<"), (ERROR, error)]


@pytest.mark.parametrize(("words", "options", "expected"), [
    # A tool parser holds the unclosed fence; the JSON answer must still get it.
    (['```json\n{"city": "Paris", "temp": 21}\n'],
     {"tools": [WEATHER_TOOL], "response_format": {"type": "json_object"}}, '{"city": "Paris", "temp": 21}'),
    # A tool parser holds the closing backtick; the stop stage must not lose it.
    (["Run `ls`"], {"tools": [WEATHER_TOOL], "stop": ["```"]}, "Run `ls`"),
    # The stop stage holds "EN", the think splitter "<": in the order they came.
    (["a EN", "<"], {"stop": ["END"]}, "a EN<"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_text_held_by_several_stages_reaches_the_client_whole(raw_dify, raw_client, words, options, expected,
                                                               stream):
    raw_dify.answer = whole_answer(words)
    messages = user_message("x")
    if stream:
        text, finish = stream_text(raw_client, model="raw-chat", messages=messages, **options)
    else:
        choice = raw_client.chat.completions.create(model="raw-chat", messages=messages, **options).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert (text, finish) == (expected, "stop")


def test_stop_sequences_on_text_completions(client):
    completion = client.completions.create(model="demo-chat", prompt="a b c d", stop=["c"])
    assert completion.choices[0].text == "You said: a b " and completion.choices[0].finish_reason == "stop"


def test_json_answer_extraction_unit():
    assert json_answer('Sure! ```json\n{"a": 1}\n``` Hope it helps') == '{"a": 1}'
    assert json_answer('Here: {"a": {"b": 2}} done') == '{"a": {"b": 2}}'
    assert json_answer("no json here") == "no json here"


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_object(client, recorded, stream):
    messages = user_message("give json", answer='Sure!\n```json\n{"city": "Paris"}\n```')
    if stream:
        text, _ = stream_text(client, model="demo-chat", messages=messages, response_format={"type": "json_object"})
    else:
        text = client.chat.completions.create(model="demo-chat", messages=messages,
                                              response_format={"type": "json_object"}).choices[0].message.content
    assert json.loads(text) == {"city": "Paris"}
    [call] = [r["json"] for r in recorded.requests() if r["path"] == "/v1/chat-messages"]
    assert "valid JSON object" in call["query"]


def test_response_format_json_schema_puts_the_schema_in_the_query(client, recorded):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = client.chat.completions.create(
        model="demo-chat", messages=user_message("count", answer='{"n": 3}'),
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}})
    assert json.loads(reply.choices[0].message.content) == {"n": 3}
    [call] = [r["json"] for r in recorded.requests() if r["path"] == "/v1/chat-messages"]
    assert '"required":["n"]' in call["query"]


def test_unusable_json_schema_gets_the_message_langchain_recognises(http):
    response = http("POST", "/v1/chat/completions", json={"model": "demo-chat", "messages": user_message("x"),
                                                          "response_format": {"type": "json_schema"}})
    assert response.status_code == 400
    assert "'response_format' of type 'json_schema' is not supported with this model" in response.json()["error"][
        "message"]


def test_tool_made_files_show_as_markdown_with_absolute_urls(client, emulator):
    steps = [{"thought": "drawing", "tool": "dalle", "tool_input": {"prompt": "cat"}, "observation": "done",
              "files": [{"type": "image", "url": "/files/tools/cat.png?sign=x"}]}]
    content = client.chat.completions.create(model="demo-agent", messages=user_message("draw", agent_steps=steps)) \
        .choices[0].message.content
    assert f"![image]({emulator.root_url}/files/tools/cat.png?sign=x)" in content


@pytest.fixture(scope="module")
def progress_client(start_gateway):
    gateway = start_gateway(WORKFLOW_PROGRESS="on")
    return gateway, openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)


def test_chatflow_node_progress_as_reasoning_when_asked(progress_client, client):
    _, progress = progress_client
    message = progress.chat.completions.create(model="demo-chatflow", messages=user_message("hi")).choices[0].message
    assert "Running" in message.reasoning_content and message.content.endswith("You said: hi")
    default = client.chat.completions.create(model="demo-chatflow", messages=user_message("hi")).choices[0].message
    assert getattr(default, "reasoning_content", None) is None  # off by default


WORKFLOW_FAILED = {"message": "Dify workflow failed: node broke", "type": "server_error", "param": None,
                   "code": "workflow_failed"}


def post_failing_chatflow(gateway, order: str, **scenario) -> requests.Response:
    body = {"model": "demo-chatflow", "stream": True, "messages": user_message(
        "x", workflow_status="failed", workflow_error="node broke", chatflow_order=order, **scenario)}
    return requests.post(gateway.base_url + "/chat/completions", json=body, stream=True, timeout=30,
                         headers={"Authorization": f"Bearer {CLIENT_KEY}"})


@pytest.mark.parametrize("order", ["post1131", "pre113"])
def test_chatflow_failure_after_output_ends_the_stream_with_an_error_event(progress_client, order):
    """Dify sends the node progress and the answer before the failing node ends: the stream
    is committed, keeps what came, and ends with the error."""
    gateway, _ = progress_client
    response = post_failing_chatflow(gateway, order)
    assert response.status_code == 200
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:]) == {"error": WORKFLOW_FAILED}
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines[:-2] if line.startswith("data: {")]
    progress = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    assert progress == "Running Start (start)\nRunning LLM (llm)\n"
    assert "".join(delta.get("content") or "" for delta in deltas) == "You said: x"


@pytest.mark.parametrize("order", ["post1131", "pre113"])
def test_chatflow_failure_before_any_output_is_a_502(gateway, order):
    error = assert_openai_error(post_failing_chatflow(gateway, order, chunks=[]), 502)
    assert error == WORKFLOW_FAILED
