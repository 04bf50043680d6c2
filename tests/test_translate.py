"""Unit tests: Dify events -> OpenAI chunks and completions."""

import json

import pytest

from services.errors import OpenAIError
from services.translate import (
    END,
    ERROR,
    PING_ITEM,
    REPLACE,
    TEXT,
    ChatCompletionBuilder,
    ChunkEncoder,
    DifyEventTranslator,
)

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


def test_chunks_are_single_data_lines_with_constant_ids():
    encoder = ChunkEncoder("chatcmpl-x", 123, "my-app", include_usage=True)
    wire = encoder.role() + encoder.render([(TEXT, 'say "hi"\n'), PING_ITEM, (END, ("stop", None))])
    blocks = sse_payloads(wire)
    assert blocks[2] == ": ping" and blocks[-1] == "data: [DONE]"
    chunks = [json.loads(block[len("data: "):]) for block in blocks if block.startswith("data: {")]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-x", 123, "my-app", "chat.completion.chunk")}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": 'say "hi"\n'}
    assert chunks[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[3]["choices"] == [] and chunks[3]["usage"]["total_tokens"] == 0


def test_usage_chunk_only_when_asked():
    encoder = ChunkEncoder("chatcmpl-x", 1, "m", include_usage=False)
    blocks = sse_payloads(encoder.render([(END, ("stop", {"prompt_tokens": 1}))]))
    assert len(blocks) == 2 and blocks[-1] == "data: [DONE]"


def test_error_item_ends_the_stream_with_an_error_event():
    encoder = ChunkEncoder("chatcmpl-x", 1, "m", include_usage=False)
    error = OpenAIError(502, "boom", type="server_error", code="upstream_error")
    blocks = sse_payloads(encoder.render([(TEXT, "a"), (ERROR, error)]))
    assert json.loads(blocks[1][6:]) == {"error": {"message": "boom", "type": "server_error", "param": None,
                                                   "code": "upstream_error"}}
    assert blocks[2] == "data: [DONE]"


def test_builder_assembles_text_usage_and_replacement():
    builder = ChatCompletionBuilder()
    for item in [(TEXT, "Hel"), (TEXT, "lo"), PING_ITEM, (END, ("stop", {"prompt_tokens": 1, "completion_tokens": 2,
                                                                           "total_tokens": 3}))]:
        builder.add(*item)
    body = builder.body("chatcmpl-x", 5, "m")
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["total_tokens"] == 3
    moderated = ChatCompletionBuilder()
    for item in [(TEXT, "bad"), (REPLACE, "[removed]"), (END, ("stop", None))]:
        moderated.add(*item)
    choice = moderated.body("c", 1, "m")["choices"][0]
    assert choice["message"]["content"] == "[removed]" and choice["finish_reason"] == "content_filter"


def test_builder_raises_errors():
    with pytest.raises(OpenAIError):
        ChatCompletionBuilder().add(ERROR, OpenAIError(502, "x"))
