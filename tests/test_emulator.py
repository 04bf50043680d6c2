"""The Dify emulator, started for real and exercised over HTTP."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dify_emulator.apps import DEFAULT_APPS
from dify_emulator.audio import spoken_words
from dify_emulator.control import EmulatorProcess, start_emulator

EXTRA_APPS = [
    {"key": "app-legacy", "name": "legacy-chat", "mode": "chat", "profile": "legacy"},
    {"key": "app-restx", "name": "restx-chat", "mode": "chat", "profile": "restx"},
    {"key": "app-chatflow-old", "name": "old-chatflow", "mode": "advanced-chat", "chatflow_order": "pre113"},
    {"key": "app-busy", "name": "busy", "mode": "chat", "max_active_requests": 1, "concurrency_error": "400"},
    {"key": "app-off", "name": "off", "mode": "chat", "api_disabled": True},
    {"key": "app-old-info", "name": "old-info", "mode": "chat", "info_has_mode": False},
    {
        "key": "app-tiny-files",
        "name": "tiny-files",
        "mode": "chat",
        "system_parameters": {"file_size_limit": 0.001},
        "file_upload": {"enabled": True, "number_limits": 1},
    },
    {"key": "app-default-scenario", "name": "scripted", "mode": "chat", "default_scenario": {"answer": "fixed reply"}},
]
CHAT_ENVELOPE = ["event", "conversation_id", "message_id", "created_at", "task_id"]
PRICE_KEYS = ["prompt_unit_price", "prompt_price_unit", "prompt_price", "completion_unit_price"]
PRICE_KEYS += ["completion_price_unit", "completion_price", "total_price"]


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with start_emulator(apps=DEFAULT_APPS + EXTRA_APPS) as process:
        yield process


def directive(**settings: Any) -> str:
    return "@emulator " + json.dumps(settings)


def post(emu: EmulatorProcess, key: str, path: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return requests.post(emu.base_url + path, json=body, headers=headers, timeout=10, **kwargs)


def chat(emu: EmulatorProcess, query: str, key: str = "app-demo-chat", **fields: Any) -> requests.Response:
    body = {"query": query, "inputs": {}, "user": "alice", "response_mode": "streaming", **fields}
    return post(emu, key, "/chat-messages", body, stream=body["response_mode"] == "streaming")


def parse_block(block: str) -> dict[str, Any] | str:
    if block == "event: ping":
        return "ping"
    assert block.startswith("data: "), block
    return json.loads(block[len("data: ") :])


def events(response: requests.Response) -> list[dict[str, Any] | str]:
    """All events of a finished stream; pings appear as the string "ping"."""
    raw = response.content.decode()
    assert raw.endswith("\n\n") and "[DONE]" not in raw
    return [parse_block(block) for block in raw[:-2].split("\n\n")]


def live_events(response: requests.Response) -> Iterator[tuple[float, dict[str, Any] | str]]:
    """Events with their arrival time, as they arrive."""
    buffer = ""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield time.monotonic(), parse_block(block)


def data_events(items: list[dict[str, Any] | str]) -> list[dict[str, Any]]:
    return [item for item in items if isinstance(item, dict)]


def names(items: list[dict[str, Any] | str]) -> list[str]:
    return [item if isinstance(item, str) else item["event"] for item in items]


def answer_of(items: list[dict[str, Any] | str]) -> str:
    text_events = ("message", "agent_message")
    return "".join(e["answer"] for e in data_events(items) if e["event"] in text_events)


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# -- basics, auth, errors --------------------------------------------------------------


def test_welcome_needs_no_auth(emu: EmulatorProcess) -> None:
    response = requests.get(emu.base_url + "/", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"welcome": "Dify OpenAPI", "api_version": "v1", "server_version": "1.16.1"}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Authorization header must be provided and start with 'Bearer'"),
        ("Bearer", "Authorization header must be provided and start with 'Bearer'"),
        ("Basic app-demo-chat", "Authorization scheme must be 'Bearer'"),
        ("Bearer app-nope", "Access token is invalid"),
        ("bearer app-nope", "Access token is invalid"),
    ],
)
def test_auth_failures(emu: EmulatorProcess, header: str | None, message: str) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(emu.base_url + "/info", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": message, "status": 401}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert response.text.endswith("}\n") and '"code": "unauthorized"' in response.text


def test_disabled_app_and_legacy_401(emu: EmulatorProcess) -> None:
    response = requests.get(emu.base_url + "/info", headers={"Authorization": "Bearer app-off"}, timeout=5)
    assert response.status_code == 403
    assert response.json()["message"] == "The app's API service has been disabled."
    legacy = chat(emu, "hi " + directive(http_error="unauthorized"), key="app-legacy")
    assert legacy.status_code == 401 and "WWW-Authenticate" not in legacy.headers


def test_metadata_endpoints(emu: EmulatorProcess) -> None:
    def get(path: str, key: str) -> Any:
        return requests.get(emu.base_url + path, headers={"Authorization": f"Bearer {key}"}, timeout=5).json()

    assert get("/info", "app-demo-agent")["mode"] == "agent-chat"
    assert get("/info", "app-old-info") == {"name": "old-info", "description": "", "tags": []}
    params = get("/parameters", "app-demo-completion")
    assert params["user_input_form"][0]["paragraph"]["variable"] == "query"
    assert params["system_parameters"]["image_file_size_limit"] == 10
    assert get("/meta", "app-demo-chat") == {"tool_icons": {}}
    assert get("/site", "app-demo-chat")["title"] == "demo-chat"


def test_http_level_errors(emu: EmulatorProcess) -> None:
    headers = {"Authorization": "Bearer app-demo-chat"}
    not_json = requests.post(emu.base_url + "/chat-messages", data="x", headers=headers, timeout=5)
    assert not_json.status_code == 415 and not_json.json()["code"] == "unsupported_media_type"
    bad = requests.post(
        emu.base_url + "/chat-messages", data="{", headers={**headers, "Content-Type": "application/json"}, timeout=5
    )
    assert bad.status_code == 400 and bad.json()["code"] == "bad_request"
    wrong_method = requests.get(emu.base_url + "/chat-messages", headers=headers, timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"
    unknown = requests.get(emu.base_url + "/nope", headers=headers, timeout=5)
    assert unknown.status_code == 404 and unknown.headers["Content-Type"].startswith("text/html")
    no_user = post(emu, "app-demo-chat", "/chat-messages", {"query": "x", "inputs": {}})
    assert no_user.json() == {"code": "invalid_param", "message": "Arg user must be provided.", "status": 400}
    wrong_mode = post(emu, "app-demo-workflow", "/chat-messages", {"query": "x", "inputs": {}, "user": "u"})
    assert wrong_mode.json()["code"] == "not_chat_app"
    wrong_mode = post(emu, "app-demo-chat", "/completion-messages", {"inputs": {}, "user": "u"})
    assert wrong_mode.json()["code"] == "app_unavailable"
    wrong_mode = post(emu, "app-demo-chat", "/workflows/run", {"inputs": {}, "user": "u"})
    assert wrong_mode.json()["code"] == "not_workflow_app"


def test_validation_error_formats(emu: EmulatorProcess) -> None:
    body = {"query": "hi", "user": "u"}
    modern = post(emu, "app-demo-chat", "/chat-messages", body).json()
    assert modern["code"] == "invalid_param" and modern["status"] == 400
    assert modern["message"].startswith("1 validation error for ChatRequestPayload\ninputs\n  Field required")
    restx = post(emu, "app-restx", "/chat-messages", body).json()
    assert restx["message"] == "Input payload validation failed" and "inputs" in restx["errors"]
    legacy = post(emu, "app-legacy", "/chat-messages", body).json()
    assert legacy == {
        "code": "invalid_param",
        "message": "Missing required parameter in the JSON body",
        "params": "inputs",
    }
    empty = chat(emu, "", response_mode="blocking")
    assert empty.json()["message"] == "query is required"


# -- streams per app type ----------------------------------------------------------------


def test_chat_stream_shape(emu: EmulatorProcess) -> None:
    response = chat(emu, "hello 世界 " + directive(delay_ms=1))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    raw = response.content.decode()
    assert '"answer":"世界"' in raw  # compact JSON with raw UTF-8
    items = events(response)
    assert names(items) == ["message"] * 4 + ["message_end"]
    assert answer_of(items) == "You said: hello 世界"
    first = data_events(items)[0]
    assert list(first)[:5] == CHAT_ENVELOPE and first["id"] == first["message_id"]
    assert len({(e["created_at"], e["task_id"], e["conversation_id"]) for e in data_events(items)}) == 1
    end = data_events(items)[-1]
    usage = end["metadata"]["usage"]
    assert usage["prompt_tokens"] == 2 and usage["completion_tokens"] == 4 and usage["total_tokens"] == 6
    assert all(isinstance(usage[key], str) for key in PRICE_KEYS) and usage["currency"] == "USD"
    assert isinstance(usage["latency"], float) and end["files"] == []


def test_legacy_profile_uses_spaced_ascii_json(emu: EmulatorProcess) -> None:
    raw = chat(emu, "你好", key="app-legacy").content.decode()
    assert raw.startswith('data: {"event": "message", "conversation_id": ')
    assert "\\u4f60\\u597d" in raw


def test_blocking_bodies(emu: EmulatorProcess) -> None:
    body = chat(emu, "hi there", response_mode="blocking").json()
    assert body["event"] == "message" and body["mode"] == "chat" and body["answer"] == "You said: hi there"
    assert body["id"] == body["message_id"] and body["metadata"]["annotation_reply"] is None
    agent = chat(emu, "hi", key="app-demo-agent", response_mode="blocking")
    assert agent.json() == {
        "code": "invalid_param",
        "message": "Agent Chat App does not support blocking mode",
        "status": 400,
    }
    omitted = post(emu, "app-demo-agent", "/chat-messages", {"query": "hi", "inputs": {}, "user": "u"})
    assert omitted.status_code == 400
    flow = chat(emu, "hi " + directive(workflow_status="failed"), key="app-demo-chatflow", response_mode="blocking")
    assert flow.status_code == 400 and flow.json()["message"] == "Run failed: Emulated node failure"
    model_error = chat(emu, "hi " + directive(error_after=1), response_mode="blocking")
    assert model_error.status_code == 400 and model_error.json()["code"] == "completion_request_error"


def test_completion_app(emu: EmulatorProcess) -> None:
    body = {"inputs": {"query": "translate this"}, "user": "u", "response_mode": "streaming"}
    items = events(post(emu, "app-demo-completion", "/completion-messages", body, stream=True))
    first = data_events(items)[0]
    assert list(first)[:4] == ["event", "message_id", "created_at", "task_id"] and "conversation_id" not in first
    assert answer_of(items) == "You said: translate this" and names(items)[-1] == "message_end"
    blocking = post(emu, "app-demo-completion", "/completion-messages", {**body, "response_mode": "blocking"}).json()
    assert blocking["mode"] == "completion" and "conversation_id" not in blocking
    missing = post(emu, "app-demo-completion", "/completion-messages", {"inputs": {}, "user": "u"}).json()
    assert missing["message"] == "query is required in input form"


def test_agent_thought_sequence(emu: EmulatorProcess) -> None:
    items = data_events(events(chat(emu, "what time is it", key="app-demo-agent")))
    assert [e["event"] for e in items] == [
        "agent_thought",
        "agent_message",
        "agent_thought",
        "agent_thought",
        "agent_thought",
        *["agent_message"] * 6,
        "agent_thought",
        "message_end",
    ]
    thoughts = [e for e in items if e["event"] == "agent_thought"]
    assert thoughts[0]["id"] == thoughts[1]["id"] == thoughts[2]["id"] != thoughts[3]["id"] == thoughts[4]["id"]
    assert thoughts[0]["tool"] == "" and thoughts[1]["tool"] == "current_time"
    assert json.loads(thoughts[1]["tool_input"]) == {"current_time": {}}
    assert json.loads(thoughts[2]["observation"]) == {"current_time": "2025-01-01 10:00:00"}
    assert [t["position"] for t in thoughts] == [1, 1, 1, 2, 2]
    assert thoughts[4]["thought"] == "You said: what time is it"
    assert answer_of(items) == "You said: what time is it"


def test_agent_tool_files(emu: EmulatorProcess) -> None:
    step = {"tool": "dalle", "tool_input": {"prompt": "cat"}, "observation": "done", "files": [{"url": "/files/x.png"}]}
    items = data_events(events(chat(emu, "draw " + directive(agent_steps=[step]), key="app-demo-agent")))
    file_event = next(e for e in items if e["event"] == "message_file")
    assert file_event["belongs_to"] == "assistant" and file_event["url"] == "/files/x.png"
    with_files = [e for e in items if e["event"] == "agent_thought" and e["message_files"]]
    assert with_files[0]["message_files"] == [file_event["id"]]


def test_chatflow_orders_and_dialogue_count(emu: EmulatorProcess) -> None:
    items = events(chat(emu, "first", key="app-demo-chatflow"))
    assert names(items)[:2] == ["ping", "workflow_started"] and names(items)[-2:] == [
        "message_end",
        "workflow_finished",
    ]
    started = data_events(items)[0]
    assert list(started)[:7] == [*CHAT_ENVELOPE, "workflow_run_id", "data"]
    assert started["data"]["inputs"]["sys.dialogue_count"] == 1
    message = next(e for e in data_events(items) if e["event"] == "message")
    assert message["from_variable_selector"][1] == "text"
    again = events(chat(emu, "second", key="app-demo-chatflow", conversation_id=started["conversation_id"]))
    assert data_events(again)[0]["data"]["inputs"]["sys.dialogue_count"] == 2
    old = events(chat(emu, "hi", key="app-chatflow-old"))
    assert names(old)[0] == "workflow_started" and names(old)[-2:] == ["workflow_finished", "message_end"]
    order = directive(chatflow_order="pre113")
    assert names(events(chat(emu, "hi " + order, key="app-demo-chatflow")))[-1] == "message_end"


def test_workflow_app(emu: EmulatorProcess) -> None:
    body = {"inputs": {"text": "make it so"}, "user": "u", "response_mode": "streaming"}
    items = events(post(emu, "app-demo-workflow", "/workflows/run", body, stream=True))
    assert names(items)[:2] == ["ping", "workflow_started"] and names(items)[-1] == "workflow_finished"
    chunk = next(e for e in data_events(items) if e["event"] == "text_chunk")
    assert list(chunk) == ["event", "workflow_run_id", "task_id", "data"]
    text = "".join(e["data"]["text"] for e in data_events(items) if e["event"] == "text_chunk")
    finished = data_events(items)[-1]["data"]
    assert text == "You said: make it so" and finished["outputs"] == {"answer": text}
    assert finished["status"] == "succeeded" and finished["created_by"]["user"] == "u"
    custom = {**body, "inputs": {"text": "x " + directive(outputs={"n": 1})}, "response_mode": "blocking"}
    blocking = post(emu, "app-demo-workflow", "/workflows/run", custom).json()
    assert blocking["data"]["outputs"] == {"n": 1} and blocking["data"]["status"] == "succeeded"
    failed = {**body, "inputs": {"text": directive(workflow_status="failed", workflow_error="boom") + " x"}}
    last = data_events(events(post(emu, "app-demo-workflow", "/workflows/run", failed, stream=True)))[-1]
    assert last["data"]["status"] == "failed" and last["data"]["error"] == "boom"
    missing = post(emu, "app-demo-workflow", "/workflows/run", {"inputs": {}, "user": "u"}).json()
    assert missing["message"] == "text is required in input form"


# -- directives --------------------------------------------------------------------------


def test_answer_directives(emu: EmulatorProcess) -> None:
    assert answer_of(events(chat(emu, directive(answer="a b")))) == "a b"
    chunked = events(chat(emu, directive(chunks=["x", "", "yz"])))
    assert [e["answer"] for e in data_events(chunked)[:-1]] == ["x", "", "yz"]
    assert answer_of(events(chat(emu, directive(tokens=3, burst=2)))) == "w1 w2 w3 "
    writes = list(chat(emu, directive(tokens=6, burst=3, delay_ms=5)).iter_content(chunk_size=None))
    assert [w.count(b"data: ") for w in writes] == [3, 3, 1]
    assert answer_of(events(chat(emu, "q", key="app-default-scenario"))) == "fixed reply"
    last_wins = events(chat(emu, directive(answer="one") + " text " + directive(answer="two")))
    assert answer_of(last_wins) == "two"
    bad = chat(emu, directive(delay_ms="slow"))
    assert bad.status_code == 400 and "delay_ms" in bad.json()["message"]


def test_error_after(emu: EmulatorProcess) -> None:
    items = data_events(events(chat(emu, "one two three " + directive(error_after=2))))
    assert [e["event"] for e in items] == ["message", "message", "error"]
    assert list(items[-1]) == ["event", "conversation_id", "message_id", "created_at", "code", "status", "message"]
    assert items[-1]["code"] == "completion_request_error" and items[-1]["status"] == 400
    custom = directive(error_after=0, error_code="rate_limit_error", error_status=429, error_message="slow down")
    error = data_events(events(chat(emu, custom)))[-1]
    assert (error["code"], error["status"], error["message"]) == ("rate_limit_error", 429, "slow down")


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("not_found", 404, "not_found"),
        ("provider_quota_exceeded", 400, "provider_quota_exceeded"),
        ("rate_limit_error", 429, "rate_limit_error"),
        ("internal_server_error", 500, "internal_server_error"),
        ("plugin_runtime_error", 502, "plugin_runtime_error"),
        ("too_many_requests", 429, "too_many_requests"),
    ],
)
def test_http_error_json(emu: EmulatorProcess, name: str, status: int, code: str) -> None:
    response = chat(emu, "x " + directive(http_error=name))
    assert response.status_code == status and response.json()["code"] == code
    if name == "not_found":
        assert response.json()["message"].startswith("Conversation Not Exists. You have requested this URI")


def test_http_error_pages(emu: EmulatorProcess) -> None:
    nginx = chat(emu, directive(http_error="html_502"))
    assert nginx.status_code == 502 and "<center>nginx</center>" in nginx.text
    cloudflare = chat(emu, directive(http_error="html_429"))
    assert cloudflare.status_code == 429 and "error code: 1015" in cloudflare.text
    flask_404 = chat(emu, directive(http_error="html_404"))
    assert flask_404.status_code == 404 and "<title>404 Not Found</title>" in flask_404.text
    custom = chat(emu, directive(http_error={"status": 418, "code": "teapot", "message": "short"}))
    assert custom.status_code == 418 and custom.json() == {"code": "teapot", "message": "short", "status": 418}
    busy = chat(emu, directive(http_error="too_many_requests"), key="app-busy")
    assert busy.status_code == 400 and busy.json()["message"].startswith("Too many requests")


def test_split_utf8_reassembles(emu: EmulatorProcess) -> None:
    response = chat(emu, "日本語 テキスト ✓ " + directive(split_utf8=True))
    pieces = list(response.iter_content(chunk_size=None))
    assert len(pieces) > 12
    items = [parse_block(b) for b in b"".join(pieces).decode()[:-2].split("\n\n")]
    assert answer_of(items) == "You said: 日本語 テキスト ✓"


def text_events_and_between(items: list[dict[str, Any] | str]) -> tuple[list[str], list[str]]:
    """The names without pings, and the names between the first and the second text event.

    (A ping may also come before the first event: one is due every interval, whenever the
    stream gets to write.)"""
    sequence = names(items)
    first, second = [index for index, name in enumerate(sequence) if name == "message"][:2]
    return [name for name in sequence if name != "ping"], sequence[first + 1:second]


def test_pause_sends_pings(emu: EmulatorProcess) -> None:
    """Pings are due every 0.1 s and the pause lasts 0.45 s: at least one comes during it
    (how many depends on how busy the machine is)."""
    scenario = directive(ping_interval_s=0.1, pause_after=1, pause_s=0.45)
    events_only, paused = text_events_and_between(events(chat(emu, "a b " + scenario)))
    assert events_only == ["message"] * 4 + ["message_end"]
    assert paused and set(paused) == {"ping"}


def test_stall_is_silent(emu: EmulatorProcess) -> None:
    """Nothing is sent during the stall although pings are due every 0.1 s: the missed pings
    come as one, with the next write after it."""
    scenario = directive(ping_interval_s=0.1, stall_after=1, stall_s=0.4)
    events_only, stalled = text_events_and_between(events(chat(emu, "a b " + scenario)))
    assert events_only == ["message"] * 4 + ["message_end"]
    assert stalled == ["ping"]


def test_close_and_raw_and_replace(emu: EmulatorProcess) -> None:
    closed = events(chat(emu, "a b c " + directive(close_after=2)))
    assert names(closed) == ["message", "message"]
    raw = chat(emu, "x " + directive(raw_before=["data: not json\n\n", "event: foo\n\n"])).content.decode()
    assert raw.startswith("data: not json\n\nevent: foo\n\ndata: {")
    replaced = names(events(chat(emu, "x " + directive(message_replace="safe", tts=True))))
    assert replaced[-4:] == ["message_replace", "message_end", "tts_message", "tts_message_end"]


def test_reset_mid_stream(emu: EmulatorProcess) -> None:
    response = chat(emu, "a b c " + directive(reset_after=1))
    with pytest.raises(requests.exceptions.RequestException):
        b"".join(response.iter_content(chunk_size=None))
    with pytest.raises(requests.exceptions.ConnectionError):
        chat(emu, directive(reset_before_headers=True))
    wait_for(lambda: emu.streams()["active"] == 0)


def test_never_end_then_stop(emu: EmulatorProcess) -> None:
    response = chat(emu, "hi " + directive(never_end=True, ping_interval_s=0.1))
    task_id = None
    seen: list[str] = []
    for _, item in live_events(response):
        seen.append(item if isinstance(item, str) else item["event"])
        if isinstance(item, dict) and task_id is None:
            task_id = item["task_id"]
        if seen.count("ping") == 2:
            stop = post(emu, "app-demo-chat", f"/chat-messages/{task_id}/stop", {"user": "alice"})
            assert stop.status_code == 200 and stop.json() == {"result": "success"}
    assert seen[-1] == "message_end"
    assert any(s["task_id"] == task_id and s["user"] == "alice" for s in emu.stops())


def test_workflow_stop(emu: EmulatorProcess) -> None:
    body = {"inputs": {"text": "go " + directive(never_end=True)}, "user": "u", "response_mode": "streaming"}
    response = post(emu, "app-demo-workflow", "/workflows/run", body, stream=True)
    last = None
    for _, item in live_events(response):
        if isinstance(item, dict):
            if item["event"] == "workflow_started":
                post(emu, "app-demo-workflow", f"/workflows/tasks/{item['task_id']}/stop", {"user": "other"})
            last = item
    assert last is not None and last["event"] == "workflow_finished" and last["data"]["status"] == "stopped"
    unknown = post(emu, "app-demo-chat", "/chat-messages/nope/stop", {"user": "u"})
    assert unknown.json() == {"result": "success"}


def test_chatflow_stop_pre113(emu: EmulatorProcess) -> None:
    response = chat(emu, "go " + directive(never_end=True), key="app-chatflow-old")
    seen = []
    for _, item in live_events(response):
        if isinstance(item, dict):
            seen.append(item)
            if item["event"] == "message" and len(seen) == 5:
                post(emu, "app-chatflow-old", f"/chat-messages/{item['task_id']}/stop", {"user": "alice"})
    assert [e["event"] for e in seen[-2:]] == ["workflow_finished", "message_end"]
    assert seen[-2]["data"]["status"] == "stopped"


def test_disconnect_ends_stream(emu: EmulatorProcess) -> None:
    response = chat(emu, "hi " + directive(never_end=True, ping_interval_s=30))
    reader = live_events(response)  # keep a reference: dropping the reader closes the connection
    next(reader)
    assert emu.streams()["active"] >= 1
    response.close()
    wait_for(lambda: emu.streams()["active"] == 0)
    snapshot = emu.streams()
    assert snapshot["active_tasks"] == [] and snapshot["finished"] >= 1


def test_concurrency_limit(emu: EmulatorProcess) -> None:
    first = chat(emu, "hold " + directive(never_end=True, ping_interval_s=30), key="app-busy")
    reader = live_events(first)
    next(reader)
    second = chat(emu, "again", key="app-busy")
    assert second.status_code == 400 and second.json()["message"].startswith("Too many requests.")
    first.close()
    wait_for(lambda: chat(emu, "later", key="app-busy").status_code == 200)


# -- conversations, files, control -------------------------------------------------------


def test_conversations(emu: EmulatorProcess) -> None:
    unknown = chat(emu, "x", conversation_id=str(uuid.uuid4()))
    assert unknown.status_code == 404 and unknown.json()["message"].startswith("Conversation Not Exists.")
    legacy = chat(emu, "x", key="app-legacy", conversation_id=str(uuid.uuid4()))
    assert legacy.json()["message"] == "Conversation Not Exists."
    not_uuid = chat(emu, "x", conversation_id="abc")
    assert not_uuid.status_code == 400 and "conversation_id must be a valid UUID" in not_uuid.json()["message"]
    first = chat(emu, "remember me", response_mode="blocking").json()
    conversation_id = first["conversation_id"]
    foreign = chat(emu, "x", conversation_id=conversation_id, user="mallory")
    assert foreign.status_code == 404
    chat(emu, "second turn", conversation_id=conversation_id, response_mode="blocking")
    headers = {"Authorization": "Bearer app-demo-chat"}
    params = {"user": "alice", "conversation_id": conversation_id}
    history = requests.get(emu.base_url + "/messages", params=params, headers=headers, timeout=5).json()
    assert [m["query"] for m in history["data"]] == ["remember me", "second turn"]
    assert history["data"][1]["answer"] == "You said: second turn"
    listed = requests.get(emu.base_url + "/conversations", params={"user": "alice"}, headers=headers, timeout=5)
    assert conversation_id in [c["id"] for c in listed.json()["data"]]
    renamed = post(emu, "app-demo-chat", f"/conversations/{conversation_id}/name", {"name": "New", "user": "alice"})
    assert renamed.json()["name"] == "New"
    url = f"{emu.base_url}/conversations/{conversation_id}"
    deleted = requests.delete(url, json={"user": "alice"}, headers=headers, timeout=5)
    assert deleted.status_code == 204
    assert requests.delete(url, json={"user": "alice"}, headers=headers, timeout=5).status_code == 404


def upload(emu: EmulatorProcess, key: str = "app-demo-chat", **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.post(emu.base_url + "/files/upload", headers=headers, timeout=5, **kwargs)


def test_upload_and_local_files(emu: EmulatorProcess) -> None:
    created = upload(emu, files={"file": ("cat.png", b"\x89PNG", "image/png")}, data={"user": "alice"})
    assert created.status_code == 201
    record = created.json()
    assert {"id", "name", "size", "extension", "mime_type", "created_by", "created_at"} <= set(record)
    assert (record["name"], record["size"], record["extension"]) == ("cat.png", 4, "png")
    assert upload(emu, data={"user": "alice"}).json()["code"] == "no_file_uploaded"
    two = {"file": ("a.txt", b"a", "text/plain"), "other": ("b.txt", b"b", "text/plain")}
    assert upload(emu, files=two).json()["code"] == "too_many_files"
    no_type = upload(emu, files={"file": ("a.txt", b"a")})
    assert no_type.status_code == 415 and no_type.json()["code"] == "unsupported_file_type"
    big = upload(emu, key="app-tiny-files", files={"file": ("a.txt", b"x" * 2000, "text/plain")})
    assert big.status_code == 413 and big.json()["code"] == "file_too_large"
    files = [{"type": "image", "transfer_method": "local_file", "upload_file_id": record["id"]}]
    foreign = chat(emu, "look", user="bob", files=files, response_mode="blocking")
    assert foreign.status_code == 400 and foreign.json()["message"] == "Invalid upload file id"
    mine = chat(emu, "look", files=files, response_mode="blocking")
    assert mine.status_code == 200
    remote = [{"type": "image", "transfer_method": "remote_url", "url": "https://example.invalid/a.png"}]
    assert chat(emu, "look", files=remote, response_mode="blocking").status_code == 200


def test_control_endpoints(emu: EmulatorProcess) -> None:
    emu.reset()
    chat(emu, "recorded", response_mode="blocking")
    upload(emu, files={"file": ("n.txt", b"abc", "text/plain")}, data={"user": "alice"})
    recorded = emu.requests()
    assert [r["path"] for r in recorded] == ["/v1/chat-messages", "/v1/files/upload"]
    assert recorded[0]["json"]["query"] == "recorded" and recorded[0]["app"] == "demo-chat"
    assert recorded[0]["app_key"] == "app-demo-chat"
    assert all(name.lower() != "authorization" for name in recorded[0]["headers"])
    assert recorded[1]["form"] == {"user": "alice"}
    assert recorded[1]["files"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert emu.stops() == []
    streams = emu.streams()
    assert set(streams) == {"active", "started", "finished", "active_tasks"}


# -- event kinds: relabelled chunks, New Agent, reasoning, pauses, pre-run failures, extra node
# events, TTS variants (docs/dify.md 4.5, 4.6) ---------------------------------------------------

KINDS_APPS = DEFAULT_APPS + [
    {"key": "app-relabel", "name": "relabel", "mode": "chat", "message_file_relabel": True,
     "file_upload": next(app for app in DEFAULT_APPS if app["key"] == "app-demo-chat")["file_upload"]},
    {"key": "app-new-agent", "name": "new-agent", "mode": "agent"},
    {"key": "app-legacy-flow", "name": "legacy-flow", "mode": "advanced-chat", "profile": "legacy"},
]


@pytest.fixture(scope="module")
def kinds_emu() -> Iterator[EmulatorProcess]:
    with start_emulator(apps=KINDS_APPS) as process:
        yield process


def run_workflow(emu: EmulatorProcess, text: str, **fields: Any) -> requests.Response:
    body = {"inputs": {"text": text}, "user": "alice", "response_mode": "streaming", **fields}
    return post(emu, "app-demo-workflow", "/workflows/run", body, stream=body["response_mode"] == "streaming")


def test_message_file_relabel_app_option(kinds_emu: EmulatorProcess) -> None:
    """Dify 1.11.2-1.12: every answer chunk of a message with a file, the user's upload included,
    is a `message_file` event with `answer` (docs/dify.md 4.5); without a file, `message`."""
    record = upload(kinds_emu, key="app-relabel", files={"file": ("cat.png", b"\x89PNG", "image/png")},
                    data={"user": "alice"}).json()
    files = [{"type": "image", "transfer_method": "local_file", "upload_file_id": record["id"]}]
    items = data_events(events(chat(kinds_emu, "look here", key="app-relabel", files=files)))
    assert [e["event"] for e in items] == ["message_file"] * 4 + ["message_end"]
    assert "".join(e["answer"] for e in items[:-1]) == "You said: look here"
    assert list(items[0])[5:] == ["id", "answer", "from_variable_selector"] and "url" not in items[0]
    plain = data_events(events(chat(kinds_emu, "look here", key="app-relabel")))
    assert [e["event"] for e in plain] == ["message"] * 4 + ["message_end"]
    remote = [{"type": "image", "transfer_method": "remote_url", "url": "https://example.invalid/a.png"}]
    unrelabelled = data_events(events(chat(kinds_emu, "look", files=remote)))  # app-demo-chat: option off
    assert [e["event"] for e in unrelabelled] == ["message"] * 3 + ["message_end"]


def test_new_agent_mode(kinds_emu: EmulatorProcess) -> None:
    items = data_events(events(chat(kinds_emu, "what time", key="app-new-agent")))
    assert [e["event"] for e in items] == [
        "agent_thought", "agent_thought", *["agent_thought", "agent_message"] * 4, "message", "message_end"]
    call, result, answer_row = items[0], items[1], items[2]
    assert call["id"] == result["id"] != answer_row["id"] and (call["position"], answer_row["position"]) == (1, 2)
    assert (call["tool"], call["tool_input"], call["observation"]) == ("current_time", "{}", "")
    assert result["observation"] == "2025-01-01 10:00:00"  # the tool's output itself, not keyed by tool name
    assert answer_row["tool"] == answer_row["thought"] == ""
    streamed = "".join(e["answer"] for e in items if e["event"] == "agent_message")
    assert streamed == items[-2]["answer"] == "You said: what time"  # the closing message repeats it all
    assert items[-1]["metadata"]["retriever_resources"] == []
    refused = chat(kinds_emu, "hi", key="app-new-agent", response_mode="blocking")
    assert refused.status_code == 400 and refused.json() == {
        "code": "bad_request", "message": "Agent App only supports streaming response mode.", "status": 400}
    omitted = post(kinds_emu, "app-new-agent", "/chat-messages", {"query": "hi", "inputs": {}, "user": "alice"})
    assert omitted.headers["Content-Type"] == "text/event-stream; charset=utf-8"  # streams when omitted


def test_reasoning_directive(kinds_emu: EmulatorProcess) -> None:
    """Separated reasoning (Dify >= 1.15): reasoning_chunk events between the LLM node's start and
    its answer, one per word, then the empty `is_final` marker (docs/dify.md 4.5)."""
    scenario = directive(reasoning="Think first.")
    items = data_events(events(chat(kinds_emu, "hi " + scenario, key="app-demo-chatflow")))
    sequence = [e["event"] for e in items]
    start = sequence.index("reasoning_chunk")
    assert sequence[start - 1:start + 4] == ["node_started", *["reasoning_chunk"] * 3, "message"]
    chunks = items[start:start + 3]
    assert list(chunks[0]) == [*CHAT_ENVELOPE, "data"]  # no workflow_run_id: not a node event
    assert [list(c["data"]) for c in chunks] == [["message_id", "reasoning", "node_id", "is_final"]] * 3
    assert [(c["data"]["reasoning"], c["data"]["is_final"]) for c in chunks] == [
        ("Think ", False), ("first.", False), ("", True)]
    llm_node = items[start - 1]["data"]["node_id"]
    assert {(c["data"]["message_id"], c["data"]["node_id"]) for c in chunks} == {(items[0]["message_id"], llm_node)}
    assert items[-2]["event"] == "message_end" and items[-2]["metadata"]["reasoning"] == {llm_node: "Think first."}
    assert answer_of(items) == "You said: hi"
    flow = data_events(events(run_workflow(kinds_emu, "hi " + scenario)))
    workflow_chunks = [e for e in flow if e["event"] == "reasoning_chunk"]
    assert list(workflow_chunks[0]) == ["event", "workflow_run_id", "task_id", "data"]
    assert [c["data"]["message_id"] for c in workflow_chunks] == [None, None, None]  # workflows have no message


def run_app(emu: EmulatorProcess, app: str, text: str, **fields: Any) -> requests.Response:
    """A run of the demo chatflow or workflow app."""
    if app == "chatflow":
        return chat(emu, text, key="app-demo-chatflow", **fields)
    return run_workflow(emu, text, **fields)


@pytest.mark.parametrize("app", ["chatflow", "workflow"])
def test_pause_for_input_directive(kinds_emu: EmulatorProcess, app: str) -> None:
    """A Human Input node pauses the run (>= 1.13): the text, then the node's start and paused
    finish, human_input_required and workflow_paused, and the stream ends (docs/dify.md 4.5)."""
    items = data_events(events(run_app(kinds_emu, app, "hold on " + directive(pause_for_input={"node_title": "A"}))))
    sequence = [e["event"] for e in items]
    assert sequence[-5:] == ["node_finished", "node_started", "node_finished", "human_input_required",
                             "workflow_paused"]
    assert "message_end" not in sequence and "workflow_finished" not in sequence
    assert "".join(e.get("answer") or e["data"]["text"] for e in items if e["event"] in ("message", "text_chunk")) \
        == "You said: hold on"
    human_started, human_paused, required, paused = items[-4:]
    assert (human_started["data"]["node_type"], human_started["data"]["title"]) == ("human-input", "A")
    assert human_paused["data"]["status"] == "paused"
    assert required["data"]["node_title"] == "A" and required["data"]["form_token"]
    data = paused["data"]
    assert data["status"] == "paused" and data["paused_nodes"] == [required["data"]["node_id"]]
    assert data["outputs"] == {} and data["total_tokens"] == 6  # 2 prompt + 4 answer tokens
    [reason] = data["reasons"]
    assert (reason["TYPE"], reason["node_title"], reason["form_id"]) == (
        "human_input_required", "A", required["data"]["form_id"])


def test_pause_for_input_blocking_and_keep_open(kinds_emu: EmulatorProcess) -> None:
    scenario = directive(pause_for_input={"node_title": "A"})
    body = chat(kinds_emu, "hold on " + scenario, key="app-demo-chatflow", response_mode="blocking").json()
    assert (body["event"], body["answer"], body["data"]["status"]) == ("workflow_paused", "You said: hold on", "paused")
    assert body["data"]["reasons"][0]["node_title"] == "A"
    flow = run_workflow(kinds_emu, "hold on " + scenario, response_mode="blocking").json()["data"]
    assert (flow["status"], flow["finished_at"], flow["reasons"][0]["node_title"]) == ("paused", None, "A")
    held = directive(pause_for_input={"keep_open": True}, ping_interval_s=0.1)
    after: list[dict[str, Any] | str] = []
    with run_workflow(kinds_emu, "hold on " + held) as response:
        seen_pause = False
        for _, item in live_events(response):  # the stream stays open: only pings after workflow_paused
            if seen_pause:
                after.append(item)
                if len(after) == 2:
                    break
            seen_pause = seen_pause or (isinstance(item, dict) and item["event"] == "workflow_paused")
    assert after == ["ping", "ping"]


@pytest.mark.parametrize("app", ["chatflow", "workflow"])
def test_pre_run_failure_directive(kinds_emu: EmulatorProcess, app: str) -> None:
    """Dify >= 1.15: a synthetic workflow_started + workflow_finished(failed) pair, no chat
    envelope, task_id == workflow_run_id (docs/dify.md 4.4, 4.6); blocking calls, servers before
    1.13 and the easy-UI apps answer an HTTP 400 instead."""
    scenario = directive(pre_run_failure="text is required in input form")
    items = events(run_app(kinds_emu, app, "x " + scenario))
    assert names(items) == ["ping", "workflow_started", "workflow_finished"]
    started, finished = data_events(items)
    assert list(started) == list(finished) == ["event", "task_id", "workflow_run_id", "data"]
    assert started["task_id"] == started["workflow_run_id"] == finished["task_id"] == started["data"]["id"]
    data = finished["data"]
    assert (data["status"], data["error"], data["exceptions_count"]) == ("failed", "text is required in input form", 1)
    assert (data["total_steps"], data["created_by"], data["outputs"]) == (0, {}, None)
    refused = [run_app(kinds_emu, app, "x " + scenario, response_mode="blocking"),
               run_app(kinds_emu, app, "x " + directive(pre_run_failure="bad file", chatflow_order="pre113"))]
    assert [(r.status_code, r.json()["code"]) for r in refused] == [(400, "invalid_param")] * 2
    assert refused[1].json()["message"] == "bad file"
    easy = chat(kinds_emu, "x " + scenario)
    assert (easy.status_code, easy.json()["message"]) == (400, "text is required in input form")


@pytest.mark.parametrize("app", ["chatflow", "workflow"])
def test_extra_node_events_directive(kinds_emu: EmulatorProcess, app: str) -> None:
    """An Agent node with agent_log, an Iteration (two passes) and a Loop (one pass) with a node
    inside each, and a node_retry of the LLM node, before the answer (docs/dify.md 4.5)."""
    items = data_events(events(run_app(kinds_emu, app, "hi " + directive(extra_node_events=True))))
    sequence = [e["event"] for e in items]
    llm = sequence.index("node_retry") - 1
    assert sequence[3:llm + 2] == [
        "node_started", "agent_log", "agent_log", "node_finished",
        "iteration_started", *["iteration_next", "node_started", "node_finished"] * 2, "iteration_completed",
        "loop_started", "loop_next", "node_started", "node_finished", "loop_completed",
        "node_started", "node_retry"]
    assert "parallel_branch_started" not in sequence  # Dify 0.8-1.8 only
    logs = [e for e in items if e["event"] == "agent_log"]
    assert ("workflow_run_id" in logs[0]) == (app == "workflow")  # AgentLogStreamResponse has no run id of its own
    assert [log["data"]["status"] for log in logs] == ["start", "success"]
    inner = items[sequence.index("iteration_next") + 1]["data"]
    assert inner["iteration_id"] == items[sequence.index("iteration_started")]["data"]["node_id"]
    retry = items[llm + 1]["data"]
    assert (retry["status"], retry["retry_index"], retry["node_type"]) == ("retry", 1, "llm")
    text = "".join(e.get("answer") or e["data"]["text"] for e in items if e["event"] in ("message", "text_chunk"))
    assert text == "You said: hi"
    legacy = names(events(chat(kinds_emu, "hi " + directive(extra_node_events=True), key="app-legacy-flow")))
    agent = legacy.index("agent_log") - 1
    assert legacy[agent - 1] == "parallel_branch_started" and legacy[agent + 4] == "parallel_branch_finished"


def test_tts_variants(kinds_emu: EmulatorProcess) -> None:
    alone = names(events(chat(kinds_emu, "hi " + directive(tts="end_only"))))
    assert alone == ["message"] * 3 + ["message_end", "tts_message_end"]  # tests/dify_streams 0019
    mixed = names(events(chat(kinds_emu, "hi " + directive(tts="interleaved"))))
    assert mixed == ["message", "tts_message"] * 3 + ["message_end", "tts_message", "tts_message_end"]
    flow = [name for name in names(events(run_workflow(kinds_emu, "hi " + directive(tts="interleaved"))))
            if name in ("text_chunk", "tts_message", "tts_message_end", "workflow_finished")]
    assert flow == ["text_chunk", "tts_message"] * 3 + ["workflow_finished"]  # >= 1.13: nothing after the end
    assert chat(kinds_emu, "hi " + directive(tts="loud")).status_code == 400


# -- audio (docs/dify.md 16) ---------------------------------------------------------------


def audio_to_text(emu: EmulatorProcess, key: str, files: dict[str, Any] | None) -> requests.Response:
    return requests.post(emu.base_url + "/audio-to-text", headers={"Authorization": f"Bearer {key}"},
                         data={"user": "u1"}, files=files, timeout=30)


def test_audio_routes_follow_the_app_features(emu: EmulatorProcess) -> None:
    params = requests.get(emu.base_url + "/parameters", headers={"Authorization": "Bearer app-demo-chat"}, timeout=10)
    assert params.json()["speech_to_text"] == {"enabled": True}
    assert params.json()["text_to_speech"]["enabled"] is True
    off = audio_to_text(emu, "app-demo-agent", {"file": ("a.wav", b"hi", "audio/wav")})
    assert (off.status_code, off.json()["code"], off.json()["message"]) == (
        400, "invalid_param", "Speech to text is not enabled")
    tts_off = post(emu, "app-demo-agent", "/text-to-audio", {"text": "hi", "user": "u1"})
    assert (tts_off.status_code, tts_off.json()["message"]) == (400, "TTS is not enabled")
    no_text = post(emu, "app-demo-agent", "/text-to-audio", {"user": "u1"})  # checked before the feature
    assert (no_text.status_code, no_text.json()["message"]) == (400, "Text is required")


def test_audio_to_text_checks_in_difys_order(emu: EmulatorProcess) -> None:
    heard = audio_to_text(emu, "app-demo-chat", {"file": ("a.wav", "ça va".encode(), "audio/wav")})
    assert (heard.status_code, heard.json()) == (200, {"text": "ça va"})
    binary = audio_to_text(emu, "app-demo-chat", {"file": ("a.mp3", b"\xff\xfb\x90", "audio/mpeg")})
    assert binary.json() == {"text": "[3 bytes of audio/mpeg]"}
    for files, status, code in (
        (None, 400, "no_audio_uploaded"),
        ({"file": ("a.wav", b"hi", "audio/x-wav")}, 415, "unsupported_audio_type"),  # the part's type decides
        ({"file": ("a.wav", b"\0" * (30 * 1024 * 1024 + 1), "audio/wav")}, 413, "audio_too_large"),
    ):
        refused = audio_to_text(emu, "app-demo-chat", files)
        assert (refused.status_code, refused.json()["code"]) == (status, code)


def test_text_to_audio_streams_one_chunk_per_word(emu: EmulatorProcess) -> None:
    spoken = post(emu, "app-demo-chat", "/text-to-audio", {"text": "Good morning", "voice": "v2", "user": "u1"})
    assert (spoken.status_code, spoken.headers["Content-Type"]) == (200, "audio/mpeg")
    assert spoken_words(spoken.content) == ["v2:Good", "v2:morning"]
    default = post(emu, "app-demo-chat", "/text-to-audio", {"text": "Hi", "user": "u1"})
    assert spoken_words(default.content) == ["emulator-voice:Hi"]
