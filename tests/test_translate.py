"""Unit tests: Dify events -> items -> OpenAI chunks and completions."""

import json
import re

import pytest

from core.errors import OpenAIError
from core.items import AGENT_TOOL_CALL, AGENT_TOOL_RESULT, END, ERROR, PING_ITEM, REASONING, REPLACE, TEXT
from core.response.reasoning import AgentThoughts
from core.response.render import (
    ChatChunkEncoder,
    ChoiceCollector,
    TextChunkEncoder,
    TextShape,
    chat_completion_body,
    collect,
    sse_body,
)
from core.response.translate import DifyEventTranslator, outputs_text, usage_from_dify
from edge.ids import new_id

USAGE = {"prompt_tokens": 3, "prompt_price": "0.0001", "completion_tokens": 2, "total_tokens": 5,
         "total_price": "0.0002", "currency": "USD", "latency": 0.5}


def message(answer, name="message"):
    return {"event": name, "conversation_id": "c1", "message_id": "m1", "created_at": 1, "task_id": "t1",
            "id": "m1", "answer": answer}


def feed_all(translator, events):
    items = []
    for event in events:
        items += translator.feed(event)
    return items


def test_chat_stream_becomes_text_then_end_with_usage():
    translator = DifyEventTranslator("chat")
    items = feed_all(translator, [message("Hi"), message(""), {"event": "ping"}, message(" there"),
                                  {"event": "message_end", "task_id": "t1", "metadata": {"usage": USAGE}}])
    assert items == [(TEXT, "Hi"), PING_ITEM, (TEXT, " there"),
                     (END, ("stop", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}))]
    assert translator.task_id == "t1" and translator.conversation_id == "c1" and translator.finished


def test_any_event_with_an_answer_is_text():
    translator = DifyEventTranslator("agent-chat")
    assert feed_all(translator, [message("a", "agent_message"), message("b", "message_file")]) == [
        (TEXT, "a"), (TEXT, "b")]


def test_new_agent_closing_message_is_not_appended():
    translator = DifyEventTranslator("agent")
    assert feed_all(translator, [message("Hi", "agent_message"), message("Hi")]) == [(TEXT, "Hi")]


def test_error_event_becomes_error_item_with_mapped_status():
    translator = DifyEventTranslator("chat")
    [(kind, error)] = translator.feed({"event": "error", "code": "rate_limit_error", "status": 429,
                                       "message": "slow down"})
    assert kind == ERROR and error.status == 429 and translator.finished


def test_chatflow_both_orders_end_once():
    finished = {"event": "workflow_finished", "task_id": "t", "data": {"status": "succeeded"}}
    end = {"event": "message_end", "task_id": "t", "metadata": {}}
    for order in ([end, finished], [finished, end]):
        items = feed_all(DifyEventTranslator("advanced-chat"), order)
        assert [kind for kind, _ in items] == [END]


def test_chatflow_failure_and_cut_stream():
    failed = {"event": "workflow_finished", "data": {"status": "failed", "error": "node broke"}}
    [(kind, error)] = DifyEventTranslator("advanced-chat").feed(failed)
    assert kind == ERROR and "node broke" in error.message
    translator = DifyEventTranslator("advanced-chat")
    translator.feed({"event": "workflow_finished", "data": {"status": "succeeded"}})
    assert [kind for kind, _ in translator.feed_eof()] == [END]


def test_eof_before_the_end_is_an_error():
    translator = DifyEventTranslator("chat")
    translator.feed(message("partial"))
    [(kind, error)] = translator.feed_eof()
    assert kind == ERROR and error.code == "upstream_incomplete"


def sse_payloads(data: bytes):
    text = data.decode()
    assert text.endswith("\n\n")
    return [block for block in text.split("\n\n") if block]


def chunks_of(blocks):
    return [json.loads(block[len("data: "):]) for block in blocks if block.startswith("data: {")]


def pulled(batches):
    """`batches` handed out one per call, then None: what the relays' `next` does."""
    remaining = iter(batches)
    return lambda: next(remaining, None)


def body(batches, encoders, include_usage=False):
    closed = []
    wire = b"".join(sse_body(pulled(batches), encoders, include_usage, lambda: closed.append(True)))
    assert closed == [True]
    return sse_payloads(wire)


def test_chunks_are_single_data_lines_with_constant_ids():
    encoder = ChatChunkEncoder("chatcmpl-x", 123, "my-app")
    blocks = body([(0, [(TEXT, 'say "hi"\n'), PING_ITEM]), (0, [(END, ("stop", None))])], [encoder], True)
    assert blocks[2] == ": ping" and blocks[-1] == "data: [DONE]"
    chunks = chunks_of(blocks)
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-x", 123, "my-app", "chat.completion.chunk")}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": 'say "hi"\n'}
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 0


def test_usage_chunk_only_when_asked_and_summed_over_choices():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    encoders = [ChatChunkEncoder("c", 1, "m", index) for index in range(2)]
    batches = [(1, [(TEXT, "b")]), (0, [(TEXT, "a"), (END, ("stop", usage))]), (1, [(END, ("stop", usage))])]
    plain = body(batches, encoders)
    assert plain[-1] == "data: [DONE]"  # not asked: the last choice's finish chunk is the last chunk, no usage
    assert json.loads(plain[-2][6:]) == {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "system_fingerprint": None,
        "choices": [{"index": 1, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    assert not any(c["choices"] == [] or "usage" in c for c in chunks_of(plain))
    chunks = chunks_of(body(batches, encoders, include_usage=True))
    assert [c["choices"][0]["index"] for c in chunks[:-1]] == [0, 1, 1, 0, 0, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 4,
                                                                     "total_tokens": 6}


def test_error_item_ends_the_stream_with_an_error_event():
    error = OpenAIError(502, "boom", type="server_error", code="upstream_error")
    blocks = body([(0, [(TEXT, "a"), (ERROR, error)]), (0, [(TEXT, "never sent")])], [ChatChunkEncoder("c", 1, "m")])
    assert json.loads(blocks[-2][6:]) == {"error": {"message": "boom", "type": "server_error", "param": None,
                                                    "code": "upstream_error"}}
    assert blocks[-1] == "data: [DONE]" and "never sent" not in "".join(blocks)


def test_text_completion_chunks_echo_and_finish():
    blocks = body([(0, [(TEXT, " world"), (END, ("stop", None))])], [TextChunkEncoder("cmpl-x", 1, "m", 0, "hello")])
    chunks = chunks_of(blocks)
    assert [c["choices"][0]["text"] for c in chunks] == ["hello", " world", ""]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[0]["object"] == "text_completion"


def test_collectors_assemble_text_usage_and_replacement():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    collectors = [ChoiceCollector(), ChoiceCollector()]
    total = collect([(0, [(TEXT, "Hel"), PING_ITEM])], pulled([(1, [(TEXT, "bad"), (REPLACE, "[removed]")]),
                    (0, [(TEXT, "lo"), (END, ("stop", usage))]), (1, [(END, ("stop", usage))])]), collectors,
                    lambda: None)
    completion = chat_completion_body("chatcmpl-x", 5, "m", collectors, total)
    first, second = completion["choices"]
    assert first["message"]["content"] == "Hello" and first["finish_reason"] == "stop" and first["index"] == 0
    assert second["message"]["content"] == "[removed]" and second["finish_reason"] == "content_filter"
    assert completion["usage"]["total_tokens"] == 6


def test_collect_raises_errors_and_still_closes():
    closed = []
    with pytest.raises(OpenAIError):
        collect([], pulled([(0, [(ERROR, OpenAIError(502, "x"))])]), [ChoiceCollector()], lambda: closed.append(True))
    assert closed == [True]


def test_workflow_text_outputs_and_usage():
    translator = DifyEventTranslator("workflow")
    items = translator.feed({"event": "workflow_finished", "task_id": "t", "data": {
        "status": "succeeded", "outputs": {"result": "42", "score": 1}, "total_tokens": 7}})
    assert items == [(TEXT, "42"), (END, ("stop", {"prompt_tokens": 0, "completion_tokens": 7, "total_tokens": 7}))]
    streamed = DifyEventTranslator("workflow")
    assert streamed.feed({"event": "text_chunk", "data": {"text": "4"}}) == [(TEXT, "4")]
    assert [kind for kind, _ in streamed.feed({"event": "workflow_finished", "data": {
        "status": "succeeded", "outputs": {"answer": "4"}}})] == [END]


def test_outputs_text_choice():
    assert outputs_text({"text": "a", "other": "b"}) == "a"
    assert outputs_text({"only": "x", "n": 3}) == "x"
    assert json.loads(outputs_text({"a": "x", "b": "y"})) == {"a": "x", "b": "y"}
    assert outputs_text(None) == ""


def test_what_arrived_before_commit_goes_out_with_the_opening_in_one_write():
    encoder = ChatChunkEncoder("c", 1, "m")
    writes = list(sse_body(pulled([(0, [(END, ("stop", None))])]), [encoder], False, lambda: None,
                           first=[(0, [(TEXT, "Hi")])]))
    # The empty write after the opening lets the server drop its reference to the first one.
    assert writes[1] == b""
    sent = [write for write in writes if write]
    assert len(sent) == 2
    assert b'"role":"assistant"' in sent[0] and b'"content":"Hi"' in sent[0]
    assert sent[1].endswith(b"data: [DONE]\n\n")
    whole = list(sse_body(pulled([]), [encoder], False, lambda: None,
                          first=[(0, [(TEXT, "Hi"), (END, ("stop", None))])]))
    assert len(whole) == 1 and whole[0].endswith(b"data: [DONE]\n\n")


def test_ids_are_128_random_bits_in_hex():
    ids = {new_id("chatcmpl") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", value) for value in ids)
    assert re.fullmatch(r"req_[0-9a-f]{32}", new_id("req", "_"))


# -- review findings: moderation, New Agent, stopped and failed runs, echo, token counts -----------


def test_a_replacement_equal_to_the_answer_is_dropped_and_a_real_one_kept():
    """Dify 1.0-1.2 (langgenius/dify#17056) sends message_replace with the unchanged answer on
    every run of an app with output moderation: it changes nothing. A real one still replaces."""
    end = {"event": "message_end", "task_id": "t1", "metadata": {}}
    unchanged = feed_all(DifyEventTranslator("chat"), [
        message("shang"), message("hai"), {"event": "message_replace", "answer": "shanghai", "reason": ""}, end])
    assert unchanged == [(TEXT, "shang"), (TEXT, "hai"), (END, ("stop", None))]
    translator = DifyEventTranslator("chat")
    replaced = feed_all(translator, [message("bad"), {"event": "message_replace", "answer": "[removed]"},
                                     message(" more"), {"event": "message_replace", "answer": "[removed] more"}, end])
    assert replaced == [(TEXT, "bad"), (REPLACE, "[removed]"), (TEXT, " more"), (END, ("stop", None))]
    workflow = DifyEventTranslator("workflow")
    assert feed_all(workflow, [{"event": "text_chunk", "data": {"text": "ok"}},
                               {"event": "text_replace", "data": {"text": "ok"}}]) == [(TEXT, "ok")]
    collector = ChoiceCollector()
    for kind, value in unchanged:
        collector.add(kind, value)
    assert (collector.text, collector.finish_reason) == ("shanghai", "stop")


def test_new_agent_closing_answer_relabelled_message_file_is_not_appended():
    """After a file for the answer, Dify relabels `message` chunks as `message_file`, the closing
    full answer of New Agent included (docs/dify.md 4.5, 4.6)."""
    translator = DifyEventTranslator("agent", file_origin="http://dify")
    items = feed_all(translator, [
        message("Here ", "agent_message"), message("it is.", "agent_message"),
        {"event": "message_file", "id": "f1", "type": "image", "belongs_to": "assistant", "url": "/files/x.png"},
        message("Here it is.", "message_file")])
    assert items == [(TEXT, "Here "), (TEXT, "it is."), (TEXT, "\n\n![image](http://dify/files/x.png)\n\n")]
    # Only empty deltas before it: the closing message is the only text there is.
    assert feed_all(DifyEventTranslator("agent"), [message("", "agent_message"), message("Full answer")]) == [
        (TEXT, "Full answer")]


def thought(**fields):
    return {"event": "agent_thought", "task_id": "t1", "id": "T3", "position": 3, "thought": "", "observation": "",
            "tool": "get_weather", **fields}


@pytest.mark.parametrize("mode", ["reasoning", "tool_calls"])
def test_new_agent_tool_call_waits_for_its_whole_arguments(mode):
    """New Agent upserts the tool row with each argument delta: the call goes out once they parse."""
    translator = DifyEventTranslator("agent", AgentThoughts(mode))
    assert translator.feed(thought(tool_input='{"ci')) == []
    assert translator.feed(thought(tool_input='{"city": "Par')) == []
    completed = translator.feed(thought(tool_input='{"city": "Paris"}'))
    answered = translator.feed(thought(tool_input='{"city": "Paris"}', observation='{"temp": 21}'))
    if mode == "reasoning":
        assert completed == [(REASONING, 'Calling tool get_weather with {"city": "Paris"}\n')]
        assert answered == [(REASONING, 'get_weather returned: {"temp": 21}\n')]
    else:
        assert completed == [(AGENT_TOOL_CALL, {"id": "call_T3_0", "name": "get_weather",
                                                "arguments": '{"city": "Paris"}'})]
        assert answered == [(AGENT_TOOL_RESULT, {"id": "call_T3_0", "name": "get_weather",
                                                 "content": '{"temp": 21}'})]


def test_a_held_agent_tool_call_goes_out_at_its_observation_the_next_thought_or_the_end():
    at_observation = DifyEventTranslator("agent", AgentThoughts())
    assert at_observation.feed(thought(tool_input='{"ci')) == []
    assert at_observation.feed(thought(tool_input='{"ci', observation="sunny")) == [
        (REASONING, 'Calling tool get_weather with {"ci\nget_weather returned: sunny\n')]
    next_thought = DifyEventTranslator("agent", AgentThoughts())
    next_thought.feed(thought(tool_input='{"city": "Pa'))
    assert next_thought.feed(thought(id="T4", position=4, tool="", tool_input="")) == [
        (REASONING, 'Calling tool get_weather with {"city": "Pa\n')]
    at_end = DifyEventTranslator("agent", AgentThoughts("tool_calls"))
    at_end.feed(thought(tool_input='{"city": "Pa'))
    assert at_end.feed({"event": "message_end", "task_id": "t1", "metadata": {}}) == [
        (AGENT_TOOL_CALL, {"id": "call_T3_0", "name": "get_weather", "arguments": '{"city": "Pa'}),
        (END, ("stop", None))]


WORKFLOW_ERRORS = [
    ("[openai] Error code: 400 - This model's maximum context length is 8192 tokens. However, your messages "
     "resulted in 9000 tokens.", 400, "context_length_exceeded", False),
    ("[openai] Error code: 429 - Rate limit reached for gpt-4o", 429, "rate_limit_exceeded", True),
    ("Too many requests. Please try again later.", 429, "rate_limit_exceeded", True),
    ("You exceeded your current quota, please check your plan and billing details.", 429, "insufficient_quota", True),
    ("node broke", 502, "workflow_failed", True),
]


@pytest.mark.parametrize("mode", ["workflow", "advanced-chat"])
@pytest.mark.parametrize(("reason", "status", "code", "upstream"), WORKFLOW_ERRORS)
def test_a_failed_run_is_told_by_its_reason_as_an_error_event_would_be(mode, reason, status, code, upstream):
    translator = DifyEventTranslator(mode)
    [(kind, error)] = translator.feed({"event": "workflow_finished", "task_id": "t", "workflow_run_id": "w",
                                       "data": {"status": "failed", "error": reason}})
    assert kind == ERROR and translator.finished
    assert (error.status, error.code, error.upstream) == (status, code, upstream)
    assert error.message == f"Dify workflow failed: {reason}"
    as_event = DifyEventTranslator(mode).feed({"event": "error", "code": "completion_request_error", "status": 400,
                                               "message": reason})[0][1]
    if status != 502:  # the same words in an `error` event name the same failure
        assert (as_event.status, as_event.code) == (status, code)


def test_a_stopped_workflow_keeps_its_usage_and_outputs():
    translator = DifyEventTranslator("workflow")
    items = translator.feed({"event": "workflow_finished", "task_id": "t", "workflow_run_id": "w", "data": {
        "status": "stopped", "outputs": {"text": "partial"}, "total_tokens": 9}})
    assert items == [(TEXT, "partial"), (END, ("stop", {"prompt_tokens": 0, "completion_tokens": 9,
                                                        "total_tokens": 9}))]


def test_a_stopped_chatflow_waits_for_its_message_end_or_the_end_of_the_body():
    stopped = {"event": "workflow_finished", "task_id": "t", "data": {"status": "stopped", "total_tokens": 9}}
    end = {"event": "message_end", "task_id": "t", "metadata": {"usage": USAGE}}
    before_113 = DifyEventTranslator("advanced-chat")
    assert feed_all(before_113, [message("Hi"), stopped]) == [(TEXT, "Hi")] and not before_113.finished
    assert before_113.feed(end) == [(END, ("stop", {"prompt_tokens": 3, "completion_tokens": 2,
                                                    "total_tokens": 5}))]
    since_113 = DifyEventTranslator("advanced-chat")
    feed_all(since_113, [message("Hi"), stopped])
    assert since_113.feed_eof() == [(END, ("stop", None))]


def test_text_completion_echo_is_kept_when_dify_replaces_the_answer():
    collector = TextShape("cmpl-x", 1, "m", ["Say hi: "]).collectors()[0]
    for kind, value in [(TEXT, "hello"), (REPLACE, "[blocked]"), (END, ("stop", None))]:
        collector.add(kind, value)
    assert (collector.text, collector.finish_reason) == ("Say hi: [blocked]", "content_filter")


def test_negative_token_counts_count_zero():
    assert usage_from_dify({"prompt_tokens": "-5", "completion_tokens": -3, "total_tokens": -8}) == {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert usage_from_dify({"prompt_tokens": 4, "completion_tokens": "-1", "total_tokens": None}) == {
        "prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}
    workflow = DifyEventTranslator("workflow")
    workflow.feed({"event": "workflow_finished", "task_id": "t", "data": {"status": "succeeded", "total_tokens": -2}})
    assert workflow.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
