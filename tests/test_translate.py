"""Unit tests: Dify events -> items -> OpenAI chunks and completions."""

import json
import re

import pytest

from core.errors import OpenAIError
from core.items import END, ERROR, PING_ITEM, REPLACE, TEXT
from core.response.render import (
    ChatChunkEncoder,
    ChoiceCollector,
    TextChunkEncoder,
    chat_completion_body,
    collect,
    sse_body,
)
from core.response.translate import DifyEventTranslator, outputs_text
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
