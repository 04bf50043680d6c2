"""Conversation memory end to end: the real gateway in each CONVERSATION_MEMORY_MODE, the
emulator as Dify, and what Dify received for each turn (`/_emulator/requests`).

Conversations are sent the way NextChat sends them: the whole history every time, with the
assistant turns exactly as the gateway returned them (zero-width characters included).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import chat_requests
from tests.test_memory_codec import REFERENCE_DIGITS, reference_encode

EXPECTED_USER = "opendify-" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:24]
SYSTEM = {"role": "system", "content": "Be brief."}
QUESTIONS = ("first question", "second question", "third question")
SEPARATOR = "\u2063"  # between a reply's message id and its conversation id
ZERO_WIDTH = {*REFERENCE_DIGITS, SEPARATOR}
STREAMING = pytest.mark.parametrize("stream", [False, True], ids=["blocking", "stream"])


@pytest.fixture(scope="module")
def history_gateway(start_gateway):
    return start_gateway(CONVERSATION_MEMORY_MODE="1")


@pytest.fixture(scope="module")
def zero_width_gateway(start_gateway):
    return start_gateway(CONVERSATION_MEMORY_MODE="2")


@pytest.fixture
def gateways(request):
    """The gateway of a mode, started on first use (each mode once per module)."""
    names = {0: "gateway", 1: "history_gateway", 2: "zero_width_gateway"}
    return lambda mode: request.getfixturevalue(names[mode])


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@dataclass
class Reply:
    content: str
    conversation_header: str | None
    pieces: list[str] | None  # the content of each chunk, for streams
    finish_chunk_last: bool = True


def ask(client: openai.OpenAI, messages: list[dict], stream: bool, **kwargs) -> Reply:
    raw = client.chat.completions.with_raw_response.create(model=kwargs.pop("model", "demo-chat"),
                                                           messages=messages, stream=stream, **kwargs)
    header = raw.headers.get("X-Dify-Conversation-Id")
    if not stream:
        completion = raw.parse()
        assert completion.choices[0].finish_reason == "stop"
        return Reply(completion.choices[0].message.content, header, None)
    chunks = list(raw.parse())
    pieces = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(piece for piece in pieces), "every chunk between the role and finish chunks carries text"
    finish_last = chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].choices[0].delta.content is None
    return Reply("".join(pieces), header, pieces, finish_last)


def converse(client: openai.OpenAI, stream: bool, questions=QUESTIONS, **kwargs) -> list[Reply]:
    """A NextChat-style conversation: every request holds the whole history so far."""
    messages = [SYSTEM]
    replies = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        reply = ask(client, messages, stream, **kwargs)
        assert reply.finish_chunk_last
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply.content})
    return replies


def dify_calls(emulator) -> list[tuple[str, str, str]]:
    """(query, conversation_id, user) of every chat-messages call Dify received."""
    return [(call["json"]["query"], call["json"]["conversation_id"], call["json"]["user"])
            for call in chat_requests(emulator)]


def stored_messages(emulator, conversation_id: str, user: str = EXPECTED_USER,
                    app_key: str = "app-demo-chat") -> list[dict]:
    """What Dify stored in a conversation, oldest first (its GET /v1/messages)."""
    response = requests.get(emulator.base_url + "/messages", headers={"Authorization": f"Bearer {app_key}"},
                            params={"conversation_id": conversation_id, "user": user, "limit": 100}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def dify_messages(emulator, conversation_id: str, user: str = EXPECTED_USER, app_key: str = "app-demo-chat"):
    """(query, answer) of each message Dify stored in a conversation, oldest first."""
    return [(message["query"], message["answer"]) for message in stored_messages(emulator, conversation_id, user,
                                                                                   app_key)]


def messages_calls(emulator) -> list[dict[str, str]]:
    """The query of every GET /messages Dify received (the gateway checks a conversation's tail)."""
    return [record["args"] for record in emulator.requests() if record["path"] == "/v1/messages"]


def reply_ids(emulator, conversation_id: str, position: int, **where: str) -> str:
    """What the gateway appends to the reply of a conversation's message at `position`: the
    message id, the separator, the conversation id, each in the original zero-width scheme."""
    message_id = stored_messages(emulator, conversation_id, **where)[position]["id"]
    return reference_encode(message_id) + SEPARATOR + reference_encode(conversation_id)


def new_dify_conversation(emulator, user: str = EXPECTED_USER) -> str:
    """A conversation made by calling Dify directly (not through the gateway)."""
    response = requests.post(emulator.base_url + "/chat-messages", headers={"Authorization": "Bearer app-demo-chat"},
                             json={"query": "made elsewhere", "inputs": {}, "response_mode": "blocking",
                                   "user": user}, timeout=10)
    assert response.status_code == 200, response.text
    emulator.reset()
    return response.json()["conversation_id"]


def assert_id_in_one_piece(reply: Reply, encoded: str) -> None:
    """Stream: the id is in the last content chunk (alone or at its end), not spread out."""
    carrying = [piece for piece in reply.pieces if set(piece) & ZERO_WIDTH]
    assert carrying == [reply.pieces[-1]] and reply.pieces[-1].endswith(encoded)


def sse_content(body: str) -> str:
    """The text of a raw chat-completion SSE body."""
    events = [line[len("data: "):] for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return "".join(json.loads(event)["choices"][0]["delta"].get("content") or "" for event in events[:-1])


# --- Three turns in each mode ------------------------------------------------------------------

@STREAMING
def test_mode_0_every_turn_is_a_new_conversation(gateways, recorded, stream):
    replies = converse(sdk(gateways(0)), stream)
    assert [reply.content for reply in replies] == [f"You said: Be brief.\n\n{q}" for q in QUESTIONS]
    assert dify_calls(recorded) == [(f"Be brief.\n\n{q}", "", EXPECTED_USER) for q in QUESTIONS]
    headers = [reply.conversation_header for reply in replies]
    assert len(set(headers)) == 3 and all(headers)
    for header, question in zip(headers, QUESTIONS, strict=True):
        assert dify_messages(recorded, header) == [(f"Be brief.\n\n{question}", f"You said: Be brief.\n\n{question}")]


@STREAMING
def test_mode_1_every_turn_folds_the_history(gateways, recorded, stream):
    first, second, third = converse(sdk(gateways(1)), stream)
    assert first.content == "You said: Be brief.\n\nfirst question"  # no history yet: as in mode 0
    expected_queries = [
        "Be brief.\n\nfirst question",
        f"System:\nBe brief.\n\nUser:\nfirst question\n\nAssistant:\n{first.content}\n\n"
        "Current question:\nsecond question",
        f"System:\nBe brief.\n\nUser:\nfirst question\n\nAssistant:\n{first.content}\n\n"
        f"User:\nsecond question\n\nAssistant:\n{second.content}\n\nCurrent question:\nthird question",
    ]
    assert dify_calls(recorded) == [(query, "", EXPECTED_USER) for query in expected_queries]
    assert [second.content, third.content] == [f"You said: {query}" for query in expected_queries[1:]]
    assert not any(set(reply.content) & ZERO_WIDTH for reply in (first, second, third))
    assert len({first.conversation_header, second.conversation_header, third.conversation_header}) == 3


@STREAMING
def test_mode_2_three_turns_continue_one_dify_conversation(gateways, recorded, stream):
    first, second, third = converse(sdk(gateways(2)), stream)
    conversation_id = first.conversation_header
    endings = [reply_ids(recorded, conversation_id, position) for position in range(3)]
    assert first.content == "You said: Be brief.\n\nfirst question" + endings[0]
    assert second.content == "You said: second question" + endings[1]
    assert third.content == "You said: third question" + endings[2]
    if stream:
        for reply, ending in zip((first, second, third), endings, strict=True):
            assert_id_in_one_piece(reply, ending)
    assert dify_calls(recorded) == [
        ("Be brief.\n\nfirst question", "", EXPECTED_USER),
        ("second question", conversation_id, EXPECTED_USER),
        ("third question", conversation_id, EXPECTED_USER),
    ]
    assert [second.conversation_header, third.conversation_header] == [conversation_id, conversation_id]
    assert dify_messages(recorded, conversation_id) == [
        ("Be brief.\n\nfirst question", "You said: Be brief.\n\nfirst question"),
        ("second question", "You said: second question"),
        ("third question", "You said: third question"),
    ]


@STREAMING
def test_mode_2_openai_user_field_is_the_dify_user_of_every_turn(gateways, recorded, stream):
    first, _, _ = converse(sdk(gateways(2)), stream, user="alice")
    conversation_id = first.conversation_header
    assert dify_calls(recorded) == [
        ("Be brief.\n\nfirst question", "", "alice"),
        ("second question", conversation_id, "alice"),
        ("third question", conversation_id, "alice"),
    ]
    assert len(dify_messages(recorded, conversation_id, user="alice")) == 3


def test_mode_2_user_with_a_lone_surrogate_continues_as_valid_utf8(gateways, recorded):
    # JSON can carry "\ud800"; Dify gets the user as valid UTF-8 in bodies and query strings
    # (GET /messages before continuing), "?" in its place.
    def post(messages: list[dict]) -> requests.Response:
        response = requests.post(gateways(2).base_url + "/chat/completions", timeout=30,
                                 headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                                 json={"model": "demo-chat", "user": "\ud800", "messages": messages})
        assert response.status_code == 200, response.text
        return response

    messages = [{"role": "user", "content": "first question"}]
    reply = post(messages).json()["choices"][0]["message"]
    response = post([*messages, reply, {"role": "user", "content": "second question"}])
    conversation_id = response.headers["X-Dify-Conversation-Id"]
    assert dify_calls(recorded) == [("first question", "", "?"), ("second question", conversation_id, "?")]
    assert [message["user"] for message in messages_calls(recorded)] == ["?"]


@STREAMING
def test_mode_2_chatflow_app_keeps_its_conversation_state(gateways, recorded, stream):
    first, second, third = converse(sdk(gateways(2)), stream, model="demo-chatflow")
    conversation_id = first.conversation_header
    where = {"app_key": "app-demo-chatflow"}
    assert first.content == "You said: Be brief.\n\nfirst question" + reply_ids(recorded, conversation_id, 0, **where)
    assert third.content == "You said: third question" + reply_ids(recorded, conversation_id, 2, **where)
    assert [call[1] for call in dify_calls(recorded)] == ["", conversation_id, conversation_id]
    assert all(call["app_key"] == "app-demo-chatflow" for call in chat_requests(recorded))
    # Dify's own record: one conversation holding the three dialogue turns in order.
    assert dify_messages(recorded, conversation_id, app_key="app-demo-chatflow") == [
        ("Be brief.\n\nfirst question", "You said: Be brief.\n\nfirst question"),
        ("second question", "You said: second question"),
        ("third question", "You said: third question"),
    ]


def test_mode_2_with_legacy_openai_028(legacy_python, gateways, recorded):
    script = Path(__file__).with_name("legacy_memory_client.py")
    result = subprocess.run([str(legacy_python), str(script), gateways(2).base_url, CLIENT_KEY],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    calls = dify_calls(recorded)
    assert len(calls) == 6
    for rendering, turns in (("blocking", calls[:3]), ("stream", calls[3:])):
        replies = results[rendering]["replies"]
        conversation_id = turns[1][1]
        assert replies == [f"You said: {text}" + reply_ids(recorded, conversation_id, position)
                           for position, text in enumerate(("Be brief.\n\nlegacy one", "legacy two", "legacy three"))]
        assert turns == [("Be brief.\n\nlegacy one", "", EXPECTED_USER),
                         ("legacy two", conversation_id, EXPECTED_USER),
                         ("legacy three", conversation_id, EXPECTED_USER)]
    pieces = results["stream"]["first_pieces"]
    assert [piece for piece in pieces if set(piece) & ZERO_WIDTH] == [pieces[-1]]
    assert calls[1][1] != calls[4][1]  # two conversations


# --- Ids from elsewhere: the original scheme, stale ids, explicit ids --------------------------

@STREAMING
def test_mode_2_decodes_an_id_encoded_by_the_original_scheme(gateways, recorded, stream):
    conversation_id = new_dify_conversation(recorded)
    messages = [
        SYSTEM,
        {"role": "user", "content": "made elsewhere"},
        {"role": "assistant", "content": "You said: made elsewhere" + reference_encode(conversation_id) + "\n"},
        {"role": "user", "content": "what did I say?"},
    ]
    reply = ask(sdk(gateways(2)), messages, stream)
    assert reply.content == "You said: what did I say?" + reply_ids(recorded, conversation_id, 1)
    assert reply.conversation_header == conversation_id
    assert dify_calls(recorded) == [("what did I say?", conversation_id, EXPECTED_USER)]


@STREAMING
@pytest.mark.parametrize("stale", ["unknown", "other_user"])
def test_mode_2_conversation_dify_does_not_know_starts_over_with_the_history(gateways, recorded, stream, stale):
    stale_id = str(uuid.uuid4()) if stale == "unknown" else new_dify_conversation(recorded, user="someone-else")
    messages = [
        SYSTEM,
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1" + reference_encode(stale_id)},
        {"role": "user", "content": "q2"},
    ]
    reply = ask(sdk(gateways(2)), messages, stream)
    folded = "System:\nBe brief.\n\nUser:\nq1\n\nAssistant:\na1\n\nCurrent question:\nq2"
    new_id = reply.conversation_header
    assert new_id and new_id != stale_id
    assert reply.content == f"You said: {folded}" + reply_ids(recorded, new_id, 0)
    if stream:
        assert_id_in_one_piece(reply, reply_ids(recorded, new_id, 0))
    assert dify_calls(recorded) == [("q2", stale_id, EXPECTED_USER), (folded, "", EXPECTED_USER)]
    assert dify_messages(recorded, new_id) == [(folded, f"You said: {folded}")]


@STREAMING
def test_mode_2_zero_width_text_that_is_no_uuid_starts_over(gateways, recorded, stream):
    # Not an id Dify could have made: sending it would get a 400 on every later turn.
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1" + reference_encode("a1b2")},
                {"role": "user", "content": "q2"}]
    reply = ask(sdk(gateways(2)), messages, stream)
    folded = "User:\nq1\n\nAssistant:\na1\n\nCurrent question:\nq2"
    assert reply.content == f"You said: {folded}" + reply_ids(recorded, reply.conversation_header, 0)
    assert dify_calls(recorded) == [(folded, "", EXPECTED_USER)]


def explicit_id_kwargs(via: str, conversation_id: str) -> dict:
    if via == "header":
        return {"extra_headers": {"X-Dify-Conversation-Id": conversation_id}}
    return {"extra_body": {"conversation_id": conversation_id}}


@STREAMING
@pytest.mark.parametrize("via", ["header", "body"])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_explicit_conversation_id_wins(gateways, recorded, mode, via, stream):
    conversation_id = new_dify_conversation(recorded)
    messages = [SYSTEM, {"role": "user", "content": "older"}, {"role": "assistant", "content": "answer"},
                {"role": "user", "content": "continue please"}]
    reply = ask(sdk(gateways(mode)), messages, stream, **explicit_id_kwargs(via, conversation_id))
    assert reply.content == "You said: continue please"  # and no zero-width id: nothing new to remember
    assert reply.conversation_header == conversation_id
    assert dify_calls(recorded) == [("continue please", conversation_id, EXPECTED_USER)]


@STREAMING
@pytest.mark.parametrize("via", ["header", "body"])
@pytest.mark.parametrize("mode", [0, 2])
def test_unknown_explicit_conversation_id_is_a_404(gateways, recorded, mode, via, stream):
    unknown = str(uuid.uuid4())
    with pytest.raises(openai.NotFoundError) as caught:
        ask(sdk(gateways(mode)), [{"role": "user", "content": "hello?"}], stream, **explicit_id_kwargs(via, unknown))
    assert caught.value.code == "conversation_not_found" and caught.value.body["param"] == "conversation_id"
    assert unknown in caught.value.message
    assert dify_calls(recorded) == [("hello?", unknown, EXPECTED_USER)]  # no fallback to a new conversation


def test_explicit_header_wins_over_the_body_field(gateways, recorded):
    conversation_id = new_dify_conversation(recorded)
    reply = ask(sdk(gateways(0)), [{"role": "user", "content": "which one?"}], False,
                extra_headers={"X-Dify-Conversation-Id": conversation_id},
                extra_body={"conversation_id": str(uuid.uuid4())})
    assert reply.conversation_header == conversation_id
    assert dify_calls(recorded) == [("which one?", conversation_id, EXPECTED_USER)]


def test_explicit_conversation_id_must_be_a_string(gateways, recorded):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(sdk(gateways(0)), [{"role": "user", "content": "x"}], False, extra_body={"conversation_id": 5})
    assert caught.value.code == "invalid_type" and caught.value.body["param"] == "conversation_id"
    assert dify_calls(recorded) == []


def test_malformed_explicit_conversation_id_is_a_404_like_any_unknown_id(gateways, recorded):
    with pytest.raises(openai.NotFoundError) as caught:
        ask(sdk(gateways(0)), [{"role": "user", "content": "x"}], False,
            extra_headers={"X-Dify-Conversation-Id": "not-a-uuid"})
    assert caught.value.code == "conversation_not_found" and caught.value.body["param"] == "conversation_id"


# --- The conversation header on the wire -------------------------------------------------------

@STREAMING
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_every_chat_response_names_its_conversation_to_browsers(gateways, recorded, mode, stream):
    gateway = gateways(mode)
    response = requests.post(gateway.base_url + "/chat/completions", timeout=30, stream=stream,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}", "Origin": "https://chat.example"},
                             json={"model": "demo-chat", "stream": stream,
                                   "messages": [{"role": "user", "content": "header check"}]})
    assert response.status_code == 200
    content = sse_content(response.text) if stream else response.json()["choices"][0]["message"]["content"]
    conversation_id = response.headers["X-Dify-Conversation-Id"]
    exposed = [name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")]
    assert "x-dify-conversation-id" in exposed
    query = "header check"
    assert dify_calls(recorded) == [(query, "", EXPECTED_USER)]
    assert dify_messages(recorded, conversation_id) == [(query, f"You said: {query}")]
    assert content == f"You said: {query}" + (reply_ids(recorded, conversation_id, 0) if mode == 2 else "")
