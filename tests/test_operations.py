"""Operations: Prometheus metrics added up over the workers, and JSON log lines."""

from __future__ import annotations

import hashlib
import json
import re
import threading

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.scenarios import directive, wait_for

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
