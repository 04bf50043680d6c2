"""Chat completions through the real gateway and the emulator, driven by the openai SDK."""

from __future__ import annotations

import hashlib

import openai
import pytest

from tests.conftest import CLIENT_KEY
from tests.scenarios import chat_requests, user_message

EXPECTED_USER = "opendify-" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:24]


def test_non_streaming_answer_is_assembled_from_the_dify_stream(client, recorded):
    completion = client.chat.completions.create(model="demo-chat", messages=user_message("Hello there"))
    choice = completion.choices[0]
    assert choice.message.content == "You said: Hello there"
    assert choice.message.role == "assistant" and choice.finish_reason == "stop" and choice.index == 0
    assert completion.object == "chat.completion" and completion.model == "demo-chat"
    assert completion.id.startswith("chatcmpl-") and completion.created > 1_700_000_000
    # The emulator counts query words and answer deltas ("You ", "said: ", "Hello ", "there").
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 6
    [call] = chat_requests(recorded)
    assert call["json"]["response_mode"] == "streaming"  # Dify is always called streaming
    assert call["json"]["query"] == "Hello there" and call["json"]["user"] == EXPECTED_USER
    assert call["app_key"] == "app-demo-chat"


def test_streaming_chunks_follow_the_openai_rules(client):
    stream = client.chat.completions.create(model="demo-chat", messages=user_message("one two three"),
                                            stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {(chunk.id, chunk.created, chunk.model) for chunk in chunks} == {
        (chunks[0].id, chunks[0].created, "demo-chat")}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "You said: one two three"
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].delta.content is None
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert all(chunk.usage is None for chunk in chunks)  # no usage chunk unless asked


def test_usage_chunk_when_include_usage(client):
    chunks = list(client.chat.completions.create(model="demo-chat", messages=user_message("count me"),
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 2 + 4
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_helper_builds_the_final_message(client):
    with client.chat.completions.stream(model="demo-chat", messages=user_message("helper")) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "You said: helper"


def test_query_is_system_prompt_plus_latest_user_turn(client, recorded):
    client.chat.completions.create(model="demo-chat", messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": [{"type": "text", "text": "new"}, {"type": "text", "text": "question"}]},
    ])
    [call] = chat_requests(recorded)
    assert call["json"]["query"] == "You are terse.\n\nnew\nquestion"
    assert call["json"]["conversation_id"] in ("", None)


def test_unknown_fields_and_nulls_are_accepted(client):
    completion = client.chat.completions.create(
        model="demo-chat", messages=user_message("fine"), temperature=0.3, top_p=None, seed=None,
        logprobs=None, max_tokens=50, presence_penalty=0, user=None, n=1,
        extra_body={"thinking": {"type": "off"}, "verbosity": "low", "store": False, "metadata": None})
    assert completion.choices[0].message.content == "You said: fine"


def test_openai_user_field_becomes_the_dify_user(client, recorded):
    client.chat.completions.create(model="demo-chat", messages=user_message("hi"), user="alice")
    [call] = chat_requests(recorded)
    assert call["json"]["user"] == "alice"


@pytest.mark.parametrize("model", ["demo-agent", "demo-chatflow"])
@pytest.mark.parametrize("stream", [False, True])
def test_agent_and_chatflow_apps(client, model, stream):
    messages = user_message("what time is it")
    if stream:
        text = "".join(chunk.choices[0].delta.content or ""
                       for chunk in client.chat.completions.create(model=model, messages=messages, stream=True))
    else:
        text = client.chat.completions.create(model=model, messages=messages).choices[0].message.content
    assert text == "You said: what time is it"  # the agent's tool call is reasoning, not content


def test_multibyte_text_split_across_tcp_writes_arrives_whole(client):
    answer = "Grüße, 你好, 🙂 — fin"
    chunks = client.chat.completions.create(model="demo-chat", stream=True,
                                            messages=user_message("x", answer=answer, split_utf8=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == answer


def test_unknown_model_is_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-app", messages=user_message("hi"))
    assert caught.value.code == "model_not_found" and caught.value.body["param"] == "model"


def test_answers_reuse_one_pooled_connection_to_dify(client, recorded):
    """The gateway reads Dify's body itself; a finished answer must give its connection back
    to the pool (a new connection per request would still work, only slower)."""
    for _ in range(3):
        client.chat.completions.create(model="demo-chat", messages=user_message("one"))
        assert "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            model="demo-chat", messages=user_message("two"), stream=True) if chunk.choices) == "You said: two"
    connections = {call["client"] for call in chat_requests(recorded)}
    assert len(chat_requests(recorded)) == 6 and len(connections) <= 2, connections
