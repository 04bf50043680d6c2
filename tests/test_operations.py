"""Operations: Prometheus metrics added up over the workers, JSON log lines, and what a reload
(SIGHUP) leaves behind."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.gateway_process import ROOT, free_port
from tests.scenarios import EVENT_WAIT, directive, user_message, wait_for

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
SAMPLE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def scrape(gateway, headers=HEADERS) -> dict[tuple[str, frozenset], float]:
    """GET /metrics as {(name, labels): value}."""
    response = requests.get(gateway.root_url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = SAMPLE.match(line).groups()
            pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels or ""))
            samples[(name, pairs)] = float(value)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat(gateway, text: str, stream: bool = False, **body) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30, stream=stream,
                         json={"model": "demo-chat", "stream": stream,
                               "messages": [{"role": "user", "content": text}], **body})


@pytest.fixture(scope="module")
def two_workers(start_gateway):
    return start_gateway(WORKERS="2", LOG_FORMAT="json", ACCESS_LOG="-", MAX_CONCURRENT_REQUESTS="50")


def access_lines(gateway) -> list[dict]:
    lines = [json.loads(line) for line in gateway.output().splitlines() if line.strip()]
    return [line for line in lines if line.get("logger") == "opendify.access"]


def test_counts_add_up_over_both_workers(two_workers):
    """Requests over many connections until both workers served some; the metrics count them all."""
    before = scrape(two_workers)
    sent = {"stream": 0, "json": 0}

    def one(stream: bool) -> None:
        response = chat(two_workers, "count me", stream=stream)
        assert response.status_code == 200
        assert response.content  # read to the end
        sent["stream" if stream else "json"] += 1

    def both_workers_served() -> bool:
        threads = [threading.Thread(target=one, args=(index % 2 == 0,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pids = {line["pid"] for line in access_lines(two_workers) if line["path"] == "/v1/chat/completions"}
        return len(pids) >= 2

    wait_for(both_workers_served, "both workers to serve requests")
    after = scrape(two_workers)
    made = sent["stream"] + sent["json"]
    counted = value(after, "opendify_requests_total", route="/chat/completions", model="demo-chat", status="200") - \
        value(before, "opendify_requests_total", route="/chat/completions", model="demo-chat", status="200")
    assert counted == made
    durations = value(after, "opendify_request_duration_seconds_count", route="/chat/completions", model="demo-chat")
    assert durations - value(before, "opendify_request_duration_seconds_count", route="/chat/completions",
                             model="demo-chat") == made
    first_tokens = value(after, "opendify_time_to_first_token_seconds_count", model="demo-chat") - \
        value(before, "opendify_time_to_first_token_seconds_count", model="demo-chat")
    assert first_tokens == made
    # "You said: count me": 4 completion tokens each, as the emulator counts them.
    completion = value(after, "opendify_tokens_total", model="demo-chat", kind="completion") - \
        value(before, "opendify_tokens_total", model="demo-chat", kind="completion")
    assert completion == 4 * made
    assert value(after, "opendify_tokens_total", model="demo-chat", kind="prompt") > \
        value(before, "opendify_tokens_total", model="demo-chat", kind="prompt")


def test_errors_statuses_disconnects_and_stops_are_counted(two_workers, recorded):
    before = scrape(two_workers)
    assert chat(two_workers, f"x {directive(http_error='too_many_requests')}").status_code == 429
    assert requests.post(two_workers.base_url + "/chat/completions", timeout=10, json={}).status_code == 401
    assert chat(two_workers, "y", model="no-such-model").status_code == 404
    after = scrape(two_workers)
    assert value(after, "opendify_upstream_errors_total", kind="rate_limit_exceeded") - \
        value(before, "opendify_upstream_errors_total", kind="rate_limit_exceeded") == 1
    assert value(after, "opendify_requests_total", route="/chat/completions", model="demo-chat", status="429") - \
        value(before, "opendify_requests_total", route="/chat/completions", model="demo-chat", status="429") == 1
    assert value(after, "opendify_requests_total", route="/chat/completions", model="", status="401") - \
        value(before, "opendify_requests_total", route="/chat/completions", model="", status="401") == 1
    assert value(after, "opendify_requests_total", route="/chat/completions", model="", status="404") - \
        value(before, "opendify_requests_total", route="/chat/completions", model="", status="404") == 1
    # A client that leaves a stream: one disconnect, one stop call, and the stream is no longer active.
    response = chat(two_workers, f"hold {directive(tokens=3, never_end=True, ping_interval_s=60)}", stream=True)
    lines = response.iter_lines()
    next(line for line in lines if b'"content":"w1 ' in line)
    wait_for(lambda: value(scrape(two_workers), "opendify_streams_active") == 1, "the stream to count as active")
    response.close()
    wait_for(lambda: value(scrape(two_workers), "opendify_streams_active") == 0, "the stream to end")
    wait_for(lambda: recorded.stops(), "Dify's stop call")
    final = scrape(two_workers)
    assert value(final, "opendify_client_disconnects_total") - value(before, "opendify_client_disconnects_total") == 1
    assert value(final, "opendify_dify_stop_calls_total") - value(before, "opendify_dify_stop_calls_total") == 1


def test_admission_rejections_are_counted(start_gateway):
    gateway = start_gateway(MAX_CONCURRENT_REQUESTS="1")
    held = chat(gateway, f"hold {directive(tokens=2, never_end=True, ping_interval_s=60)}", stream=True)
    lines = held.iter_lines()  # kept: a dropped iterator would close the connection
    next(line for line in lines if b'"content":"w1 ' in line)
    refused = chat(gateway, "one more")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "overloaded"
    held.close()
    assert value(scrape(gateway), "opendify_admission_rejections_total") == 1


def test_metrics_need_a_key_unless_public(start_gateway, gateway):
    assert requests.get(gateway.root_url + "/metrics", timeout=10).status_code == 401
    public = start_gateway(METRICS_PUBLIC="true")
    assert requests.get(public.root_url + "/metrics", timeout=10).status_code == 200
    off = start_gateway(METRICS="off")
    answer = requests.get(off.root_url + "/metrics", headers=HEADERS, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["message"] == "Metrics are off (METRICS=off)."


def test_every_log_line_is_json_and_the_access_line_says_what_happened(two_workers, recorded):
    response = chat(two_workers, "log me", stream=True)
    assert response.content  # read to the end
    request_id = response.headers["X-Request-Id"]
    # The line is written when the server closes the stream, just after its last byte left.
    [access] = wait_for(lambda: [line for line in access_lines(two_workers) if line.get("request_id") == request_id],
                        "the request's access line")
    output = two_workers.output()
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert any(json.loads(line)["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own lines too
    [call] = [record for record in recorded.requests() if record["path"] == "/v1/chat-messages"]
    assert access["method"] == "POST" and access["path"] == "/v1/chat/completions" and access["status"] == 200
    assert access["model"] == "demo-chat" and access["app_mode"] == "chat" and access["stream"] is True
    assert access["duration_ms"] >= access["ttfb_ms"] > 0
    assert access["completion_tokens"] == 4 and access["prompt_tokens"] > 0
    assert access["dify_conversation_id"] == response.headers["X-Dify-Conversation-Id"]
    assert len(access["dify_task_ids"]) == 1
    assert access["key_hash"] == hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:16]
    assert {"time", "level", "pid"} <= set(access) and call["json"]["query"] == "log me"
    assert CLIENT_KEY not in output and "app-demo-chat" not in output


# --- the time to first token, request ids during a stream, counting that never breaks a response --


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def access_line(gateway, request_id: str) -> dict:
    """The request's access line, once written (when the server closed the response)."""
    [line] = wait_for(lambda: [line for line in access_lines(gateway) if line.get("request_id") == request_id],
                      f"the access line of {request_id}")
    return line


@pytest.fixture(scope="module")
def committing_at_once(start_gateway):
    """A gateway that commits to an answer without waiting for Dify's first event."""
    return start_gateway(LOG_FORMAT="json", ACCESS_LOG="-", FIRST_EVENT_WAIT="0")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
def test_time_to_first_token_is_when_the_first_token_goes_out(committing_at_once, stream):
    """Dify's first token comes 1.5 s after the call (keep-alives before it): however early the
    gateway committed, the time to first token cannot be shorter."""
    gateway = committing_at_once
    before = scrape(gateway)
    response = chat(gateway, f"late {directive(first_delay_ms=1500, ping_interval_s=0.2)}", stream=stream)
    assert response.status_code == 200
    if stream:
        events = [json.loads(line[len("data: "):]) for line in response.text.splitlines()
                  if line.startswith("data: {")]
        text = "".join(event["choices"][0]["delta"].get("content") or "" for event in events)
    else:
        text = response.json()["choices"][0]["message"]["content"]
    assert text == "You said: late"
    access = access_line(gateway, response.headers["X-Request-Id"])
    assert access["ttfb_ms"] >= 1500
    after = scrape(gateway)

    def added(name: str, **labels: str) -> float:
        return value(after, name, model="demo-chat", **labels) - value(before, name, model="demo-chat", **labels)

    assert added("opendify_time_to_first_token_seconds_count") == 1
    assert added("opendify_time_to_first_token_seconds_bucket", le="1.0") == 0  # not the commit's time
    assert added("opendify_time_to_first_token_seconds_bucket", le="+Inf") == 1


GATE = object()  # in a Script: wait until the test opens the gate
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
IDS = {"conversation_id": "3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11", "message_id": "f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44",
       "task_id": "9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d", "created_at": 1735689600}


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(**fields) -> bytes:
    return chunk(b"data: " + json.dumps({**fields, **IDS}).encode() + b"\n\n")


class Script:
    """A RawDify answer per app run, in the order the runs reach the fake Dify (the last one for
    any further run): each answer a list of pieces sent one by one, `GATE` waiting until `open()`.
    RawDify iterates its answer to send it (and again to look for `Connection: close`): each
    connection's thread gets the same answer every time."""

    def __init__(self, *answers: list) -> None:
        self._answers = answers
        self._taken: dict[int, list] = {}
        self._lock = threading.Lock()
        self._gate = threading.Event()

    def open(self) -> None:
        self._gate.set()

    def __iter__(self) -> Iterator[bytes]:
        with self._lock:
            pieces = self._taken.setdefault(threading.get_ident(),
                                            self._answers[min(len(self._taken), len(self._answers) - 1)])
        for piece in pieces:
            if piece is GATE:
                self._gate.wait(EVENT_WAIT)
            else:
                yield piece


@pytest.fixture(scope="module")
def raw_gateway(start_gateway, raw_dify):
    return start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw", LOG_FORMAT="json",
                         ACCESS_LOG="-", SMOOTH_OUTPUT="off")


def raw_chat(gateway, **body) -> requests.Response:
    return requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=EVENT_WAIT, stream=True,
                         json={"model": "raw-chat", "stream": True, "messages": user_message("hi"), **body})


@pytest.mark.parametrize("choices", [1, 2])
def test_lines_logged_while_a_stream_is_sent_carry_its_request_id(raw_gateway, raw_dify, choices):
    """Dify sends a data line that is not JSON only after the client has the first token: the
    translator's warning is logged while the body is sent (Flask's request context is gone by
    then), by the request's greenlet (one choice) or by the readers it spawned (two)."""
    script = Script([HEAD, event(event="message", answer="Hello"), GATE, chunk(b"data: not json\n\n"),
                     event(event="message_end", metadata={}), LAST_CHUNK])
    raw_dify.answer = script
    seen = len(raw_gateway.output().splitlines())
    try:
        with raw_chat(raw_gateway, n=choices) as response:
            lines = response.iter_lines()
            next(line for line in lines if b'"content":"Hello"' in line)
            script.open()
            assert [line for line in lines if line][-1] == b"data: [DONE]"
        request_id = response.headers["X-Request-Id"]
        access_line(raw_gateway, request_id)  # written after the last byte, so after every warning
    finally:
        script.open()
    new = json_lines("\n".join(raw_gateway.output().splitlines()[seen:]))
    warnings = [line for line in new if line["logger"] == "core.response.sse"]
    assert [line.get("request_id") for line in warnings] == [request_id] * choices, warnings


def test_a_count_that_fails_breaks_neither_the_answer_nor_the_gauge_nor_the_access_line(raw_gateway, raw_dify):
    """A token count too large for the metrics' float (Counter.inc raises): the stream ends
    normally, streams_active goes back to 0, and the access line is written."""
    absurd = 10 ** 400
    raw_dify.answer = Script([HEAD, event(event="message", answer="Hello"),
                              event(event="message_end", metadata={"usage": {"prompt_tokens": 1,
                                                                             "completion_tokens": absurd}}),
                              LAST_CHUNK])
    with raw_chat(raw_gateway) as response:
        assert response.status_code == 200
        assert [line for line in response.iter_lines() if line][-1] == b"data: [DONE]"
    request_id = response.headers["X-Request-Id"]
    access = access_line(raw_gateway, request_id)
    assert access["status"] == 200 and access["completion_tokens"] == absurd
    wait_for(lambda: value(scrape(raw_gateway), "opendify_streams_active") == 0, "streams_active back at 0")
    failures = [line for line in json_lines(raw_gateway.output())
                if line["logger"] == "edge.observe" and line.get("request_id") == request_id]
    assert [line["message"] for line in failures] == ["counting tokens failed"]
    assert "OverflowError" in failures[0]["exception"]


def test_a_choice_that_fails_mid_stream_is_not_a_client_disconnect(raw_gateway, raw_dify):
    """n=2: one choice gets Dify's error after its first token while the other is still running.
    The error ends the whole stream, by the gateway's choice: the client did not leave."""
    failing = [HEAD + event(event="message", answer="Hello") + event(
        event="error", status=400, code="completion_request_error", message="the model failed") + LAST_CHUNK]
    running = [HEAD, event(event="message", answer="Hello"), GATE]
    script = Script(failing, running)
    raw_dify.answer = script
    before = scrape(raw_gateway)
    try:
        with raw_chat(raw_gateway, n=2) as response:
            lines = [line for line in response.iter_lines() if line]
        assert b'"code":"completion_request_error"' in lines[-2] and lines[-1] == b"data: [DONE]"
        access_line(raw_gateway, response.headers["X-Request-Id"])  # written after the answer was closed
    finally:
        script.open()
    after = scrape(raw_gateway)
    assert value(after, "opendify_client_disconnects_total") == value(before, "opendify_client_disconnects_total")
    assert value(after, "opendify_streams_active") == 0


# --- a reload (SIGHUP), and what a start writes ------------------------------------------------------


def test_a_reloaded_server_still_removes_its_metrics_directory(start_gateway, tmp_path):
    """gunicorn reads gunicorn.conf.py again on SIGHUP: the directory it made at the start is
    still its own, and goes when the server stops."""
    gateway = start_gateway(TMPDIR=str(tmp_path))
    [directory] = tmp_path.glob("opendify-metrics-*")
    old = set(gateway.worker_pids())
    assert chat(gateway, "before the reload").status_code == 200
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: (pids := set(gateway.worker_pids())) and not pids & old, "the new workers, and the old gone")
    wait_for(lambda: requests.get(gateway.root_url + "/readyz", timeout=10).status_code == 200, "the new worker ready")
    assert list(tmp_path.glob("opendify-metrics-*")) == [directory]  # no second directory
    # The new workers count into the same directory: the requests before the reload still add up.
    assert chat(gateway, "after the reload").status_code == 200
    counted = value(scrape(gateway), "opendify_requests_total", route="/chat/completions", model="demo-chat",
                    status="200")
    assert counted == 2
    gateway.stop()
    assert not directory.exists()


def run_to_the_end(argv: list[str], env: dict[str, str], port: int, tmp_path) -> str:
    """Start `argv`, wait until it serves, make one request, stop it (SIGTERM); its stdout and stderr."""
    out = tmp_path / "out.log"
    with out.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert process.poll() is None, out.read_text()
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, "the gateway answering /readyz")
        reply = requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=HEADERS, timeout=EVENT_WAIT,
                              json={"model": "demo-chat", "messages": user_message("hi")})
        assert reply.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(EVENT_WAIT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    return out.read_text()


def start_env(tmp_path, **env: str) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DIFY_", "VALID_API_KEYS"))}
    return {**clean, "OPENDIFY_ENV_FILE": str(tmp_path / "none.env"), "WORKERS": "1", "GRACEFUL_TIMEOUT": "5",
            "VALID_API_KEYS": CLIENT_KEY, **env}


def test_with_json_logs_every_line_of_a_demo_start_is_json(tmp_path):
    """`python openai_to_dify.py` in demo mode: the banner, gunicorn's lines, the access line and
    the stop, one JSON object each."""
    port = free_port()
    output = run_to_the_end([sys.executable, "openai_to_dify.py"],
                            start_env(tmp_path, SERVER_PORT=str(port), LOG_FORMAT="json", ACCESS_LOG="-"), port,
                            tmp_path)
    lines = json_lines(output)  # fails on any line that is not JSON
    assert all(isinstance(line, dict) for line in lines)
    [banner] = [line for line in lines if line["logger"] == "opendify"]
    assert banner["level"] == "INFO" and "DEMO MODE" in banner["message"]
    assert any(line["logger"] == "opendify.access" for line in lines)
    assert any(line["logger"] == "gunicorn.error" and line["level"] == "INFO" for line in lines)


@pytest.mark.parametrize("argv", [["openai_to_dify.py"], ["-m", "gunicorn", "-c", "gunicorn.conf.py",
                                                          "openai_to_dify:app"]], ids=["python", "gunicorn"])
def test_with_json_logs_a_bad_setting_is_one_json_line(tmp_path, argv):
    env = start_env(tmp_path, DIFY_API_BASE="http://127.0.0.1:9/v1", DIFY_API_KEYS="app-x", TIMEOUT="x",
                    LOG_FORMAT="json")
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=EVENT_WAIT)
    assert result.returncode != 0 and result.stdout == ""
    [line] = json_lines(result.stderr)
    assert (line["level"], line["logger"]) == ("ERROR", "opendify")
    assert line["message"] == "error: TIMEOUT must be a number (got 'x')"


def test_log_level_warning_drops_gunicorns_info_lines(start_gateway):
    gateway = start_gateway(LOG_FORMAT="json", LOG_LEVEL="WARNING")
    # A warning of the gateway's own still comes through: a Dify data line that is not JSON.
    assert chat(gateway, "hi " + directive(raw_before=["data: not json\n\n"])).status_code == 200

    def with_the_warning() -> list[dict] | None:
        lines = json_lines(gateway.output())
        return lines if any(line["logger"] == "core.response.sse" for line in lines) else None

    lines = wait_for(with_the_warning, "the gateway's warning")
    assert {line["level"] for line in lines} == {"WARNING"}, [line for line in lines if line["level"] != "WARNING"]
