"""The gateway's HTTP surface with raw HTTP (curl-like): SSE framing, errors, auth, CORS, routes."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.scenarios import raw_chat_request, user_message, wait_for


def read_sse(response: requests.Response) -> list[str]:
    """Every SSE line of a response, as sent (blank lines dropped)."""
    return [line for line in response.iter_lines(decode_unicode=True) if line]


def chat_body(text: str = "hi", stream: bool = True, model: str = "demo-chat", **scenario) -> dict:
    return {"model": model, "stream": stream, "messages": user_message(text, **scenario)}


def assert_openai_error(response: requests.Response, status: int, code: str | None = None,
                        param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert "app-demo" not in response.text  # a Dify key never leaks
    return error


def test_stream_framing_headers_and_done(http):
    response = http("POST", "/v1/chat/completions", json=chat_body("frame me"), stream=True,
                    headers={"Accept": "application/json", "Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers and "Content-Encoding" not in response.headers
    assert response.headers["X-Request-Id"]
    lines = read_sse(response)
    assert all(line.startswith("data: ") or line.startswith(":") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1


def test_connection_closes_after_done(gateway):
    """The raw response ends right after [DONE] (old SDKs read until the body closes)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(raw_chat_request(chat_body("close"), close=True))
        data = b""
        while chunk := sock.recv(65536):  # returns b"" once the server closed: no hang
            data += chunk
    assert b"data: [DONE]" in data and data.rstrip().endswith(b"0")


def test_keepalive_comments_while_dify_is_silent(http):
    """Dify pauses after its first word (pings only): keep-alives come during the pause, between
    the text before it and the text after it."""
    response = http("POST", "/v1/chat/completions", stream=True,
                    json=chat_body("wait", pause_after=1, pause_s=2.5, ping_interval_s=0.5))
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content") if line.startswith("data: {") else line
                for line in lines[:-1]]
    texts = [index for index, content in enumerate(contents) if content and content != ": ping"]
    assert "".join(contents[index] for index in texts) == "You said: wait"
    assert contents[texts[0]] == "You " and ": ping" in contents[texts[0] + 1:texts[1]]


def test_headers_are_sent_while_dify_has_not_answered_yet(start_gateway, recorded):
    """Dify sends nothing at all (not even its headers) until the call is dropped: the client
    still gets the headers and the opening chunk, after FIRST_EVENT_WAIT. Once the client left,
    the call waits in the background for Dify to name its task, at most TIMEOUT (2 s here)."""
    gateway = start_gateway(FIRST_EVENT_WAIT="0.3", TIMEOUT="2")
    before = set(recorded.streams()["active_tasks"])
    with requests.post(gateway.base_url + "/chat/completions", stream=True, timeout=30,
                       headers={"Authorization": "Bearer sk-opendify-test"},
                       json=chat_body("late", first_delay_ms=600_000)) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        first = next(line for line in response.iter_lines(decode_unicode=True) if line)
        assert json.loads(first[6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        [task_id] = wait_for(lambda: set(recorded.streams()["active_tasks"]) - before, "the Dify run")
    wait_for(lambda: task_id not in recorded.streams()["active_tasks"], "the Dify call dropped after the client left")


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "demo-chat"}, "messages"),
    ({"model": "demo-chat", "messages": []}, "messages"),
    ({"model": "demo-chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_bad_requests_are_400_with_param(http, body, param):
    assert_openai_error(http("POST", "/v1/chat/completions", json=body), 400, param=param)


def test_malformed_json_and_form_bodies_are_400(http):
    assert_openai_error(http("POST", "/v1/chat/completions", data="{not json"), 400, "invalid_json")
    response = http("POST", "/v1/chat/completions", data="model=x&messages=y",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_openai_error(response, 400, "invalid_json")


def test_json_without_content_type_is_accepted(http):
    response = http("POST", "/v1/chat/completions", data=json.dumps(chat_body("curl", stream=False)),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "You said: curl"


def test_unknown_model_is_404(http):
    assert_openai_error(http("POST", "/v1/chat/completions", json=chat_body(model="gpt-9")), 404,
                        "model_not_found", "model")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}])
def test_bad_or_missing_key_is_401(gateway, headers):
    response = requests.post(gateway.base_url + "/chat/completions", json=chat_body(), headers=headers, timeout=10)
    assert_openai_error(response, 401, "invalid_api_key")
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize("header", ["api-key", "X-API-Key"])
def test_alternative_key_headers(gateway, header):
    response = requests.get(gateway.base_url + "/models", headers={header: "sk-opendify-test"}, timeout=10)
    assert response.status_code == 200


def test_cors_preflight_needs_no_key_and_errors_carry_allow_origin(gateway):
    asked = "authorization, content-type, x-stainless-os, x-stainless-retry-count"
    preflight = requests.options(gateway.base_url + "/chat/completions", timeout=10, headers={
        "Origin": "https://chat.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": asked})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    denied = requests.post(gateway.base_url + "/chat/completions", json=chat_body(), timeout=10,
                           headers={"Origin": "https://chat.example"})
    assert denied.status_code == 401 and denied.headers["Access-Control-Allow-Origin"] == "*"


def test_routes_with_and_without_v1_and_no_redirects(http):
    for path in ("/v1/models", "/models", "/v1/models/", "/v1/v1/models"):
        response = http("GET", path, allow_redirects=False)
        assert response.status_code == 200, path
    response = http("POST", "/chat/completions", json=chat_body("no prefix", stream=False))
    assert response.json()["choices"][0]["message"]["content"] == "You said: no prefix"


def test_unknown_routes_and_methods_are_json(http):
    assert_openai_error(http("GET", "/v1/nothing-here"), 404)
    assert_openai_error(http("POST", "/v1/assistants", json={}), 404)
    assert_openai_error(http("GET", "/v1/chat/completions"), 405)
    assert_openai_error(http("DELETE", "/v1/models"), 405)


def test_request_id_is_honoured_when_sane(http):
    assert http("GET", "/v1/models", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    generated = http("GET", "/v1/models", headers={"X-Request-Id": "bad id\u00e9"}).headers["X-Request-Id"]
    assert generated.startswith("req_")
