"""Unit tests: request validation, content flattening, keys, Dify user, mode 0 query, errors."""

import pytest

from core.errors import OpenAIError, from_dify_error
from core.request.chat_request import parse_chat_request
from core.request.content import content_text
from core.request.memory_modes.stateless import StatelessMode
from edge.auth import dify_user_for, key_is_valid, presented_key


def parse_error(body) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    return caught.value


def test_minimal_request_and_ignored_fields():
    chat = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi", "name": "x"}],
                               "seed": None, "logprobs": None, "stream_options": {"include_usage": True},
                               "reasoning_effort": "low", "temperature": 0.2})
    assert chat.model == "m" and not chat.stream and not chat.include_usage  # usage chunk only for streams


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"text": "x"}]}]}, "messages[0].content[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
])
def test_bad_requests_name_the_parameter(body, param):
    assert parse_error(body).param == param


def test_body_must_be_an_object():
    assert parse_error([1, 2]).code == "invalid_json"


def test_content_parts_flatten_to_text_only():
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
             {"type": "thinking", "thinking": "..."}, {"type": "text", "text": "here"}]
    assert content_text(parts) == "look\nhere"
    assert content_text(None) == "" and content_text("plain") == "plain"


def test_stateless_query_is_system_prompt_plus_latest_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"}, {"role": "developer", "content": "No emoji."},
                {"role": "user", "content": [{"type": "text", "text": "second"}]}]
    turn = StatelessMode().prepare(messages)
    assert turn.query == "Be brief.\n\nNo emoji.\n\nsecond" and turn.conversation_id is None
    assert StatelessMode().prepare([{"role": "user", "content": "solo"}]).query == "solo"


def test_keys_from_every_supported_header():
    assert presented_key({"Authorization": "Bearer sk-1"}) == "sk-1"
    assert presented_key({"Authorization": "bearer  sk-2 "}) == "sk-2"
    assert presented_key({"api-key": "sk-3"}) == "sk-3"
    assert presented_key({"X-API-Key": "sk-4"}) == "sk-4"
    assert presented_key({"Authorization": "Basic abc"}) is None
    assert key_is_valid("sk-1", ("sk-0", "sk-1")) and not key_is_valid("sk-9", ("sk-1",))
    assert not key_is_valid(None, ("sk-1",))


def test_dify_user_is_stable_and_never_the_key():
    user = dify_user_for(None, "sk-secret")
    assert user == dify_user_for(None, "sk-secret") and "sk-secret" not in user
    assert user != dify_user_for(None, "sk-other")
    assert dify_user_for("alice", "sk-secret") == "alice"


@pytest.mark.parametrize(("openai_user", "header_user", "dify_user"), [
    ("\ud800", None, "?"),  # JSON may carry a lone surrogate: "\\ud800"
    ("al\udfffice\U0001F600", None, "al?ice\U0001F600"),
    ("bob", "\udc80team", "?team"),
])
def test_dify_user_is_valid_utf8(openai_user, header_user, dify_user):
    user = dify_user_for(openai_user, "sk-secret", header_user)
    assert user == dify_user and user.encode("utf-8")


@pytest.mark.parametrize(("status", "body", "expected_status", "code"), [
    (400, {"code": "invalid_param", "message": "Too many requests. Please try again later."}, 429,
     "rate_limit_exceeded"),
    (429, {"code": "too_many_requests", "message": "x"}, 429, "rate_limit_exceeded"),
    (400, {"code": "provider_quota_exceeded", "message": "quota"}, 429, "insufficient_quota"),
    (401, {"code": "unauthorized", "message": "Access token is invalid"}, 502, "upstream_auth_failed"),
    (404, {"code": "not_found", "message": "Conversation Not Exists."}, 404, "not_found"),
    (400, {"code": "completion_request_error", "message": "bad"}, 400, "completion_request_error"),
    (500, {"code": "internal_server_error", "message": "x"}, 502, "internal_server_error"),
    (502, None, 502, "upstream_error"),
])
def test_dify_errors_map_to_openai_statuses(status, body, expected_status, code):
    error = from_dify_error(status, body)
    assert (error.status, error.code) == (expected_status, code)
    if error.status == 429 and code == "rate_limit_exceeded":
        assert error.headers["Retry-After"]
