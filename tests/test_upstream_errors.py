"""Dify failures as the client sees them, and what the gateway does when a client leaves."""

from __future__ import annotations

import json
import socket
import uuid

import openai
import pytest
import requests

from core.errors import from_dify_error
from tests.conftest import CLIENT_KEY
from tests.gateway_process import free_port
from tests.scenarios import chat_requests, raw_chat_request, user_message, wait_for
from tests.test_http_surface import assert_openai_error, chat_body, read_sse
from tests.test_memory_codec import reference_encode
from tests.test_operations import scrape, value


@pytest.mark.parametrize(("dify_error", "status", "code"), [
    ("too_many_requests", 429, "rate_limit_exceeded"),
    ("rate_limit_error", 429, "rate_limit_exceeded"),
    ("completion_request_error", 400, "completion_request_error"),
    ("provider_quota_exceeded", 429, "insufficient_quota"),
    ("internal_server_error", 502, "internal_server_error"),
    ("plugin_runtime_error", 502, "plugin_runtime_error"),
    ("unauthorized", 502, "upstream_auth_failed"),
    ("html_502", 502, "upstream_error"),
    ("html_429", 429, "rate_limit_exceeded"),
    ("html_404", 502, "upstream_misconfigured"),
])
@pytest.mark.parametrize("stream", [True, False])
def test_dify_http_errors_before_the_stream(http, dify_error, status, code, stream):
    response = http("POST", "/v1/chat/completions", json=chat_body("x", stream=stream, http_error=dify_error))
    assert_openai_error(response, status, code)
    if code == "rate_limit_exceeded":
        assert int(response.headers["Retry-After"]) >= 1
    if code in ("insufficient_quota", "upstream_auth_failed", "upstream_misconfigured"):
        assert response.headers["x-should-retry"] == "false"  # retrying cannot help


@pytest.mark.parametrize("stream", [True, False])
def test_error_event_before_the_first_token_is_a_real_http_status(http, stream):
    response = http("POST", "/v1/chat/completions", json=chat_body("x", stream=stream, error_after=0))
    error = assert_openai_error(response, 400, "completion_request_error")
    assert "emulated model failure" in error["message"]


def test_error_after_tokens_keeps_the_text_and_ends_with_an_error_event(http):
    response = http("POST", "/v1/chat/completions", stream=True,
                    json=chat_body("one two three four", error_after=2))
    assert response.status_code == 200
    lines = read_sse(response)
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "completion_request_error" and error["type"] == "invalid_request_error"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in lines[:-2] if line.startswith("data: {"))
    assert text == "You said: "


def test_openai_sdk_raises_on_an_in_stream_error(client):
    stream = client.chat.completions.create(model="demo-chat", stream=True,
                                            messages=user_message("a b c d", error_after=3))
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "You said: a " and "emulated model failure" in caught.value.message


def test_stream_closed_without_message_end_is_an_error_event(http):
    lines = read_sse(http("POST", "/v1/chat/completions", stream=True, json=chat_body("a b c", close_after=2)))
    assert json.loads(lines[-2][6:])["error"]["code"] == "upstream_incomplete" and lines[-1] == "data: [DONE]"


def test_non_streaming_error_after_tokens_is_an_http_error(http):
    """Nothing was sent yet, so Dify's mid-stream error is the answer, mapped as before any token."""
    response = http("POST", "/v1/chat/completions", json=chat_body("a b c", stream=False, error_after=2))
    assert assert_openai_error(response, 400) == {"message": "Dify: [openai] Error: emulated model failure",
                                                  "type": "invalid_request_error", "param": None,
                                                  "code": "completion_request_error"}


def test_dify_unreachable_is_503(start_gateway):
    gateway = start_gateway(ready_path="/healthz", DIFY_API_BASE=f"http://127.0.0.1:{free_port()}/v1")
    response = requests.post(gateway.base_url + "/chat/completions", json=chat_body(), timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert_openai_error(response, 503, "upstream_unavailable")


def test_dify_read_timeout_is_504(start_gateway):
    gateway = start_gateway(TIMEOUT="1")
    response = requests.post(gateway.base_url + "/chat/completions", timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                             json=chat_body("slow", stream=False, first_delay_ms=600_000))  # silent until dropped
    assert_openai_error(response, 504, "upstream_timeout")


def test_stall_mid_stream_ends_with_a_timeout_error_event(start_gateway):
    gateway = start_gateway(TIMEOUT="1")
    response = requests.post(gateway.base_url + "/chat/completions", timeout=30, stream=True,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                             json=chat_body("a b c", stall_after=2))  # silent until the call is dropped
    lines = read_sse(response)
    assert json.loads(lines[-2][6:])["error"]["code"] == "upstream_timeout" and lines[-1] == "data: [DONE]"


APP_KEYS = "app-demo-chat,app-demo-agent,app-demo-chatflow,app-demo-completion,app-demo-workflow"
# model -> (app key, the route that runs it, the route that stops its task)
APP_ROUTES = {
    "demo-chat": ("app-demo-chat", "/v1/chat-messages", "/v1/chat-messages/{}/stop"),
    "demo-agent": ("app-demo-agent", "/v1/chat-messages", "/v1/chat-messages/{}/stop"),
    "demo-chatflow": ("app-demo-chatflow", "/v1/chat-messages", "/v1/chat-messages/{}/stop"),
    "demo-completion": ("app-demo-completion", "/v1/completion-messages", "/v1/completion-messages/{}/stop"),
    "demo-workflow": ("app-demo-workflow", "/v1/workflows/run", "/v1/workflows/tasks/{}/stop"),
}


def new_tasks(emulator, before: set[str], count: int) -> set[str]:
    """The Dify tasks started since `before` was taken, once there are `count` of them."""
    tasks = set(emulator.streams()["active_tasks"]) - before
    return tasks if len(tasks) == count else set()


@pytest.fixture(scope="module")
def quiet_gateway(start_gateway):
    """A gateway for every app type that would send no keep-alive for a minute."""
    return start_gateway(DIFY_API_KEYS=APP_KEYS, KEEPALIVE_INTERVAL="60")


@pytest.mark.parametrize("model", list(APP_ROUTES))
@pytest.mark.parametrize("ping_interval_s", [0.2, 60])
def test_client_disconnect_closes_upstream_and_calls_dify_stop(quiet_gateway, recorded, model, ping_interval_s):
    """Every app type: the task of the run is stopped on its app's stop route, with the run's
    user. Also while Dify and the gateway are both silent: the client socket is watched."""
    key, run_path, stop_path = APP_ROUTES[model]
    before = set(recorded.streams()["active_tasks"])  # streams of earlier tests may still be winding down
    sock = socket.create_connection(("127.0.0.1", quiet_gateway.port), timeout=10)
    sock.sendall(raw_chat_request(chat_body("leave", model=model, never_end=True, ping_interval_s=ping_interval_s)))
    assert b"200 OK" in sock.recv(65536)
    [task_id] = wait_for(lambda: new_tasks(recorded, before, 1), "the new Dify stream")
    sock.close()
    [stop] = wait_for(lambda: [stop for stop in recorded.stops() if stop["task_id"] == task_id],
                      f"the stop call for {task_id}")
    [call] = [record for record in recorded.requests() if record["path"] == run_path and record["app_key"] == key]
    assert (stop["path"], stop["user"], stop["app_key"]) == (stop_path.format(task_id), call["json"]["user"], key)
    wait_for(lambda: task_id not in recorded.streams()["active_tasks"], "the end of the upstream stream")


def test_finished_streams_call_no_stop(client, recorded):
    """A run Dify finished needs no stop. No event marks a stop that is never made, so a run
    that must be stopped, asked for next on the same worker, is the marker: once its stop is
    recorded, one for the finished stream would have been made before it."""
    finished_user, marker_user = f"finished-{uuid.uuid4()}", f"marker-{uuid.uuid4()}"
    chunks = client.chat.completions.create(model="demo-chat", messages=user_message("done"), stream=True,
                                            user=finished_user)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == "You said: done"
    marker = client.chat.completions.create(model="demo-chat", stop=["two"], user=marker_user,
                                            messages=user_message("x", chunks=["one ", "two"], never_end=True))
    assert marker.choices[0].message.content == "one "
    wait_for(lambda: [stop for stop in recorded.stops() if stop["user"] == marker_user], "the marker run's stop")
    assert [stop for stop in recorded.stops() if stop["user"] == finished_user] == []


@pytest.mark.parametrize("n", [1, 2])
def test_client_gone_before_dify_answered_cancels_the_calls_cleanly(start_gateway, recorded, n):
    """The client leaves after the stream was committed (pings) but before Dify's headers: the
    calls in flight wait in the background for Dify to name its task, and are dropped when it
    stays silent for TIMEOUT (2 s here); nothing fails in the worker, and it serves on."""
    gateway = start_gateway(FIRST_EVENT_WAIT="0.3", KEEPALIVE_INTERVAL="0.2", TIMEOUT="2")
    workers = gateway.worker_pids()
    before = set(recorded.streams()["active_tasks"])
    body = {**chat_body("late", first_delay_ms=600_000), "n": n}  # Dify sends nothing until the call is dropped
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    sock.sendall(raw_chat_request(body))
    assert b"200 OK" in sock.recv(65536)
    tasks = wait_for(lambda: new_tasks(recorded, before, n), f"{n} Dify calls in flight")
    sock.close()
    wait_for(lambda: not tasks & set(recorded.streams()["active_tasks"]), "the Dify calls dropped")
    reply = requests.post(gateway.base_url + "/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                          json=chat_body("again", stream=False), timeout=30)
    assert reply.json()["choices"][0]["message"]["content"] == "You said: again"
    assert gateway.worker_pids() == workers
    assert "Traceback" not in gateway.output() and " failed with " not in gateway.output()


# -- failed runs told by their reason; what counts as Dify's failure ------------------------------


CONTEXT_TOO_LONG = ("[openai] Error code: 400 - This model's maximum context length is 8192 tokens. However, your "
                    "messages resulted in 9000 tokens.")
RATE_LIMITED = "[openai] Error code: 429 - Rate limit reached for gpt-4o on tokens per min (TPM)."


@pytest.mark.parametrize(("reason", "status", "code"), [(CONTEXT_TOO_LONG, 400, "context_length_exceeded"),
                                                        (RATE_LIMITED, 429, "rate_limit_exceeded")])
@pytest.mark.parametrize("model", ["demo-chatflow", "demo-workflow"])
@pytest.mark.parametrize("stream", [True, False])
def test_a_failed_run_is_answered_as_its_reason_says(quiet_gateway, model, reason, status, code, stream):
    """workflow_finished(failed) carries only the failing node's text (docs/dify.md 3.4): a context
    too long or a rate limit is the status an `error` event with that text would give, not a 502."""
    response = requests.post(quiet_gateway.base_url + "/chat/completions", timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                             json=chat_body("x", stream=stream, model=model, chunks=[], workflow_status="failed",
                                            workflow_error=reason))
    error = assert_openai_error(response, status, code)
    assert error["message"] == f"Dify workflow failed: {reason}"
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(("status", "body", "upstream"), [
    (500, {"code": "internal_server_error", "message": "x"}, True),
    (502, None, True),
    (401, {"code": "unauthorized", "message": "Access token is invalid"}, True),  # the gateway's app key
    (400, {"code": "app_unavailable", "message": "App unavailable"}, True),  # the app's configuration
    (400, {"code": "not_chat_app", "message": "x"}, True),
    (429, {"code": "too_many_requests", "message": "x"}, True),
    (400, {"code": "provider_quota_exceeded", "message": "quota"}, True),
    (400, {"code": "invalid_param", "message": "Arg user must be provided."}, False),
    (400, {"code": "completion_request_error", "message": "maximum context length is 8192 tokens"}, False),
    (404, {"code": "not_found", "message": "Conversation Not Exists."}, False),
])
def test_only_failures_of_dify_are_upstream_errors(status, body, upstream):
    """opendify_upstream_errors_total counts what Dify caused, never what the request did."""
    assert from_dify_error(status, body).upstream is upstream


@pytest.fixture(scope="module")
def metered(start_gateway):
    return start_gateway(METRICS="on", CONVERSATION_MEMORY_MODE="2")


def upstream_errors(gateway) -> dict[str, float]:
    """opendify_upstream_errors_total of the kinds this test makes."""
    samples = scrape(gateway)
    return {kind: value(samples, "opendify_upstream_errors_total", kind=kind)
            for kind in ("not_found", "invalid_param", "internal_server_error")}


def test_recovered_404s_and_client_mistakes_are_not_counted_as_upstream_errors(metered, recorded):
    """A mode-2 turn whose conversation Dify no longer has gets a 404 that the gateway recovers
    from (the client gets 200), and an invalid parameter is the request's fault: neither is a
    failure of Dify. A Dify fault still counts."""
    before = upstream_errors(metered)
    stale_id = str(uuid.uuid4())
    messages = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1" + reference_encode(stale_id)},
                {"role": "user", "content": "q2"}]
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    recovered = requests.post(metered.base_url + "/chat/completions", headers=headers, timeout=30,
                              json={"model": "demo-chat", "messages": messages})
    assert recovered.status_code == 200, recovered.text
    # The 404 was met: the stale conversation was tried first, then a new one.
    assert [call["json"]["conversation_id"] for call in chat_requests(recorded)] == [stale_id, ""]
    mistake = requests.post(metered.base_url + "/chat/completions", headers=headers, timeout=30,
                            json=chat_body("x", stream=False, http_error="invalid_param"))
    assert_openai_error(mistake, 400, "invalid_param")
    fault = requests.post(metered.base_url + "/chat/completions", headers=headers, timeout=30,
                          json=chat_body("x", stream=False, http_error="internal_server_error"))
    assert_openai_error(fault, 502, "internal_server_error")
    after = upstream_errors(metered)
    assert {kind: after[kind] - before[kind] for kind in after} == {
        "not_found": 0, "invalid_param": 0, "internal_server_error": 1}
