"""Every public Dify stream of tests/dify_streams/, byte for byte, through the running gateway.

tests/test_fuzz_dify.py checks the gateway against streams made from our own reading of Dify;
this file replays what Dify itself sent (or its API reference shows): each transcript's body is
the answer a raw fake Dify (tests/raw_dify.py) gives to the run call of an app of the
transcript's mode, framed as Dify frames it (chunked, one chunk per line, the terminating
chunk after the last byte), and the real gateway (gunicorn, gevent worker) relays it to a real
HTTP client, streamed and as one JSON body. Each transcript goes out twice: in one write, and
cut into TCP pieces at places drawn from a seed of its own (inside lines, inside the CRLFs of
the chunk framing, inside multi-byte UTF-8 characters), sent apart so that the gateway meets
them as separate reads. A transcript that its source cut off goes out a third time as its
README suggests, as a connection that dropped there: in pieces, without the last chunk.

EXPECTED below says what the client must get for each transcript. It was written by reading
the transcript and docs/dify.md (3.4, 4.3-4.7, 5, 6) and the README ("How OpenAI maps onto
Dify", "Reasoning and agent steps", "Errors"), never by running the gateway's code; the one
helper, `joined`, only concatenates the `answer` fields of one event name of a transcript,
for the one answer too long to copy by hand (its result is checked against the answer Dify
itself reported in that run). How the transcripts were read:

- One `data:` line is one event, also in the hand-written examples that have no blank line
  between events (0001-0003, 0007, 0019): Dify writes `data: <one-line JSON>\\n\\n` (4.3), and its
  own web client reads the stream line by line. A `data:` line that is not JSON (a typo, a line
  cut or altered by whoever pasted it) is skipped; lines that are not SSE fields (`xxx`, the
  rest of a pretty-printed event, an event pasted without `data: `) carry nothing.
- A transcript whose source stopped before Dify's terminal event (`ends: cut off`) is a body
  that Dify ended there: no terminal event, so the answer is incomplete. A client that got
  text before that gets it, then one `data: {"error": ...}` event with `upstream_incomplete`
  and `[DONE]`; one that got no text, and every non-streaming request, gets HTTP 502
  `upstream_incomplete` (README "Errors": a broken stream; nothing was committed yet). When the
  connection dropped there instead (no last chunk), the same with `upstream_disconnected`, and
  the gateway stops the Dify task (the first `task_id` the transcript names) with the run's
  user (README mapping table: the Dify stream is gone before its end).
- Terminal events: `message_end` (chat, agent-chat, completion, chatflow), `workflow_finished`
  (workflow apps; a chatflow's `workflow_finished` is not its end while its `message_end` may
  still come, 4.6), `workflow_paused` (4.5). What follows the terminal event (TTS events, a
  resumed run) is not part of the answer.
- Usage: message_end's prompt/completion/total tokens; workflow apps: `total_tokens` as
  completion tokens (README "Dify app types"); missing counts are 0.
- Agent apps: `agent_message` deltas are the answer (4.6); a thought that calls a tool shows as
  reasoning (its thought text, then "Calling tool X with <args>"), a thought without a tool is
  the final answer already streamed and adds nothing (README "Reasoning and agent steps"); a
  file made by a tool is a Markdown image in the content (README, `message_file`).

Settings that make the expectations exact: SMOOTH_OUTPUT off, CONVERSATION_MEMORY_MODE 0 (no
zero-width ids in replies), CITATIONS off (no transcript carries citations where Dify puts
them: the documented examples have `retriever_resources` inside `usage`), THINK_TAGS and
AGENT_THOUGHTS at their defaults. One gateway serves every transcript, one app key per mode.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, replace
from itertools import pairwise

import pytest
import requests

from tests.conftest import CLIENT_KEY
from tests.dify_stream_corpus import CORPUS_DIR, TRANSCRIPTS, load
from tests.gateway_process import GatewayProcess
from tests.raw_dify import RawDify

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MODES = ("chat", "agent-chat", "advanced-chat", "completion", "workflow")
APP_KEYS = {mode: f"app-replay-{mode}" for mode in MODES}
MODELS = {mode: f"replay-{mode}" for mode in MODES}
RUN_ROUTES = {"completion": "/v1/completion-messages", "workflow": "/v1/workflows/run"}  # else /v1/chat-messages
STOP_ROUTES = {"completion": "/v1/completion-messages/{}/stop", "workflow": "/v1/workflows/tasks/{}/stop"}
CLIENT_TIMEOUT = (5, 20)  # connect, read: far below the gateway's keep-alive (60 s), so a stuck answer fails
PIECE_PAUSE = 0.002  # seconds between two TCP pieces: each reaches the gateway as a read of its own
INCOMPLETE = "upstream_incomplete"
DISCONNECTED = "upstream_disconnected"
LAST_CHUNK = b"0\r\n\r\n"


@dataclass(frozen=True)
class Expected:
    content: str = ""
    reasoning: str = ""
    usage: tuple[int, int, int] | None = None  # prompt, completion, total (None: the answer fails)
    finish_reason: str = "stop"
    error: str | None = None  # the OpenAI error code; all of them here are HTTP 502 without a stream

    @property
    def committed(self) -> bool:
        """Something reached a streaming client before the error: it already has HTTP 200."""
        return bool(self.content or self.reasoning)


def joined(name: str, event: str) -> str:
    """The `answer` of every `event` event of a transcript, in order, joined."""
    events = load(CORPUS_DIR / name).events()
    return "".join(item["answer"] for item in events if isinstance(item, dict) and item.get("event") == event)


GLAD = " I'm glad to"  # the documented examples: " meet" and " you" are on the lines with the typo
DOCUMENTED_USAGE = (1033, 135, 1168)
SLIDESHOW_RUN = "0025-advanced-chat-whole-1.13.1-1.15.sse"

EXPECTED: dict[str, Expected] = {
    # message x4 (lines 5-6 not JSON), message_end.
    "0001-chat-documented-0.4.9.sse": Expected(GLAD, usage=DOCUMENTED_USAGE),
    "0002-completion-documented-0.4.9.sse": Expected(GLAD, usage=DOCUMENTED_USAGE),
    # workflow_finished (a chatflow's is not its end), message x4, message_end.
    "0003-advanced-chat-documented-0.6.0.sse": Expected(GLAD, usage=DOCUMENTED_USAGE),
    # workflow_finished: no text_chunk and `outputs` {} (no output at all: an empty answer);
    # total_tokens 63127864; the TTS events after it are not text.
    "0004-workflow-documented-tts-0.6.14.sse": Expected("", usage=(0, 63127864, 63127864)),
    # workflow_paused ends the answer: the pause note naming the Human Input node of its
    # `reasons`, total_tokens 0; the resumed run printed after it is another stream.
    "0005-workflow-documented-human-input-1.13.3.sse": Expected(
        "[Paused in Dify: waiting for input at Human Input]", usage=(0, 0, 0)),
    # agent_thought calling dalle3 (no observation yet), message_file (an image, absolute URL),
    # agent_message, message_end with usage {total_tokens: 50} only.
    "0006-agent-chat-documented-dify-docs-1.16.sse": Expected(
        "\n\n![image](https://example.com/cat.png)\n\nHere is the image: ",
        reasoning='Thinking about calling a tool...\nCalling tool dalle3 with {"prompt": "a cute cat"}\n',
        usage=(0, 0, 50)),
    # As 0001; the TTS events after message_end are not text.
    "0007-chat-documented-tts-0.6.14.sse": Expected(GLAD, usage=DOCUMENTED_USAGE),
    # Empty agent_message deltas and 20 pings, then the body ends inside an event: no text.
    "0010-agent-chat-pings-1.0.1.sse": Expected(error=INCOMPLETE),
    # workflow_started, then the body ends inside node_started.
    "0011-advanced-chat-start-0.8-1.8.sse": Expected(error=INCOMPLETE),
    # workflow_started, node_started, then the body ends inside the first message.
    "0012-advanced-chat-compact-wrapped-1.9-1.12.sse": Expected(error=INCOMPLETE),
    "0013-advanced-chat-parallel-start-1.9-1.12.sse": Expected(error=INCOMPLETE),
    "0014-workflow-llm-node-1.x.sse": Expected(error=INCOMPLETE),
    "0015-workflow-pings-1.0.sse": Expected(error=INCOMPLETE),
    # An empty message delta, then the body ends inside node_finished.
    "0016-advanced-chat-moderation-1.x.sse": Expected(error=INCOMPLETE),
    # An empty agent_thought; the agent_message line has no `data: ` (not an event).
    "0017-agent-chat-no-data-prefix-1.x.sse": Expected(error=INCOMPLETE),
    "0018-agent-chat-thought-1.4.0.sse": Expected(error=INCOMPLETE),
    # An empty agent_thought, agent_message "The", message_end, tts_message_end.
    "0019-agent-chat-tts-end-0.7-0.8.sse": Expected("The", usage=(20, 481, 501)),
    # Two deltas and a ping, then the body ends: the text, then the error.
    "0020-chat-ping-0.6.sse": Expected("\u4f60\u597d\uff01", error=INCOMPLETE),
    # 38 deltas; the author pretty-printed message_end over 24 lines, so `data: {` is not JSON
    # and the other 23 lines are not SSE fields: no terminal event.
    "0021-completion-whole-0.15.sse": Expected(
        "public class Main {\n"
        "    public static void main(String[] args) {\n"
        "        System.out.println(main());\n"
        "    }\n"
        "\n"
        "    public static int main() {\n"
        "        return 1;\n"
        "    }\n"
        "}", error=INCOMPLETE),
    # workflow_started, node_finished, ping; the one message is not JSON (unescaped quotes), `xxx`.
    "0022-advanced-chat-abridged-1.4.2-1.8.sse": Expected(error=INCOMPLETE),
    # agent_thought (empty), agent_message x3, agent_thought repeating the answer (no tool), message_end.
    "0023-agent-chat-whole-1.13-1.15.sse": Expected(
        "你好！有什么可以帮助你的吗？无论是写作还是纠错，我都会尽力协助你。请告诉我你的需求。", usage=(16, 25, 41)),
    # text_chunk x9 (the last two empty); workflow_finished total_tokens 24.
    "0024-workflow-whole-1.13-1.15.sse": Expected("你好👋！有什么可以帮助你的吗？", usage=(0, 24, 24)),
    # Three message deltas from the LLM, the Answer node's literal "/", the HTTP body in one
    # message; message_end (12/12/24), then workflow_finished.
    SLIDESHOW_RUN: Expected(joined(SLIDESHOW_RUN, "message"), usage=(12, 12, 24)),
    "0026-advanced-chat-parallel-start-2-1.9-1.12.sse": Expected(error=INCOMPLETE),
    # The only line is cut: not one event.
    "0027-agent-chat-compact-1.8.1.sse": Expected(error=INCOMPLETE),
    "0028-advanced-chat-answer-node-1.4.1.sse": Expected(error=INCOMPLETE),
}


def test_every_transcript_has_an_expectation():
    assert sorted(EXPECTED) == sorted(path.name for path in TRANSCRIPTS)


def test_the_long_answer_is_the_one_dify_reported():
    """`joined` for 0025 equals the answer Dify itself put in that run's workflow_finished outputs."""
    finished = [item for item in load(CORPUS_DIR / SLIDESHOW_RUN).events()
                if isinstance(item, dict) and item.get("event") == "workflow_finished"]
    assert EXPECTED[SLIDESHOW_RUN].content == finished[0]["data"]["outputs"]["answer"]
    assert EXPECTED[SLIDESHOW_RUN].content.startswith("你好👋！有什么可以帮助你的吗？/{\n  \"slideshow\"")


# --- the wire ---------------------------------------------------------------------------------


def http_response(body: bytes) -> bytes:
    """The transcript's body as Dify's answer: chunked, one chunk per line, then the last chunk."""
    lines = body.splitlines(keepends=True)
    assert b"".join(lines) == body
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    return head + b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines) + LAST_CHUNK


def tcp_pieces(response: bytes, name: str) -> list[bytes]:
    """`response` cut at places drawn from the transcript's own seed: inside CRLFs, inside
    multi-byte characters (before a continuation byte) and inside lines."""
    rng = random.Random(zlib.crc32(name.encode()))
    body_start = response.index(b"\r\n\r\n") + 4
    inside_crlf = [match.start() + 1 for match in re.finditer(rb"\r\n", response)]
    inside_char = [at for at in range(body_start, len(response)) if 0x80 <= response[at] <= 0xBF]
    inside_line = [at for at in range(body_start + 1, len(response)) if not {10, 13} & {*response[at - 1:at + 1]}]
    cuts = set(rng.sample(inside_crlf, min(8, len(inside_crlf))))
    cuts |= set(rng.sample(inside_char, min(8, len(inside_char))))
    cuts |= set(rng.sample(inside_line, min(12, len(inside_line))))
    bounds = [0, *sorted(cuts), len(response)]
    pieces = [response[start:end] for start, end in pairwise(bounds)]
    assert b"".join(pieces) == response
    # Some piece ends inside a CRLF, and inside a character when the transcript has any.
    assert any(piece.endswith(b"\r") for piece in pieces[:-1])
    assert not inside_char or any(0x80 <= piece[0] <= 0xBF for piece in pieces[1:])
    return pieces


# --- the client's side ------------------------------------------------------------------------


def usage_dict(usage: tuple[int, int, int]) -> dict[str, int]:
    return dict(zip(("prompt_tokens", "completion_tokens", "total_tokens"), usage, strict=True))


def assert_error_body(response: requests.Response, code: str) -> None:
    assert response.status_code == 502, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["code"] == code, body


def check_stream(response: requests.Response, expected: Expected) -> None:
    if expected.error and not expected.committed:
        assert_error_body(response, expected.error)  # nothing was sent: a real HTTP status
        return
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("text/event-stream"), response.headers
    lines = response.content.decode("utf-8").split("\n")
    for line in lines:
        assert line == "" or line.startswith(("data: ", ": ")), f"not an SSE line: {line[:200]!r}"
    data = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1, data[-3:]
    payloads = [json.loads(item) for item in data[:-1]]
    errors = [payload for payload in payloads if "error" in payload]
    chunks = [payload for payload in payloads if "error" not in payload]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}, chunks[0]
    assert all(chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"] for chunk in chunks)
    if expected.error:
        assert len(errors) == 1 and payloads[-1] is errors[0], errors or payloads[-1:]
        assert set(errors[0]["error"]) == {"message", "type", "param", "code"}, errors[0]
        assert errors[0]["error"]["code"] == expected.error, errors[0]
    else:
        assert not errors, errors
        usage_chunk = chunks.pop()  # stream_options.include_usage
        assert usage_chunk["choices"] == [] and usage_chunk["usage"] == usage_dict(expected.usage), usage_chunk
    assert all(len(chunk["choices"]) == 1 and chunk["choices"][0]["index"] == 0 for chunk in chunks), chunks
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    if expected.error:
        assert not any(finishes), finishes
    else:  # one finish chunk, the last
        assert [reason for reason in finishes if reason] == [expected.finish_reason] == finishes[-1:], finishes
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert not [delta for delta in deltas if set(delta) - {"role", "content", "reasoning_content"}], deltas
    assert "".join(delta.get("content") or "" for delta in deltas) == expected.content
    assert "".join(delta.get("reasoning_content") or "" for delta in deltas) == expected.reasoning


def check_body(response: requests.Response, expected: Expected) -> None:
    if expected.error:
        assert_error_body(response, expected.error)
        return
    assert response.status_code == 200, response.text[:500]
    body = response.json()
    assert body["object"] == "chat.completion" and len(body["choices"]) == 1, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == expected.finish_reason, choice
    message = choice["message"]
    assert message["role"] == "assistant" and "tool_calls" not in message and "citations" not in message, message
    assert message["content"] == expected.content
    assert message.get("reasoning_content", "") == expected.reasoning, message
    assert body["usage"] == usage_dict(expected.usage), body["usage"]


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_dify():
    server = RawDify()
    server.apps = {key: {"name": MODELS[mode], "description": "", "tags": [], "mode": mode, "author_name": "t"}
                   for mode, key in APP_KEYS.items()}
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(raw_dify):
    with GatewayProcess({
        "DIFY_API_BASE": raw_dify.base_url, "DIFY_API_KEYS": ",".join(APP_KEYS.values()),
        "VALID_API_KEYS": CLIENT_KEY, "CONVERSATION_MEMORY_MODE": "0", "SMOOTH_OUTPUT": "off", "CITATIONS": "off",
        "THINK_TAGS": "reasoning", "AGENT_THOUGHTS": "reasoning", "WORKFLOW_PROGRESS": "off",
        "KEEPALIVE_INTERVAL": "60", "TIMEOUT": "10", "FIRST_EVENT_WAIT": "10",
    }) as process:
        yield process


@pytest.fixture(scope="module")
def session():
    with requests.Session() as http:
        yield http


def first_task_id(path) -> str | None:
    """The task a gateway must stop when the transcript's connection drops: the first one named."""
    return next((item["task_id"] for item in load(path).events() if isinstance(item, dict) and item.get("task_id")),
                None)


CASES = [(path, delivery) for path in TRANSCRIPTS
         for delivery in ("whole", "cut", *(("dropped",) if load(path).headers["ends"].startswith("cut off") else ()))]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize(("path", "delivery"), CASES,
                         ids=[f"{path.name.removesuffix('.sse')}-{delivery}" for path, delivery in CASES])
def test_replayed_transcript_gives_the_client_what_dify_meant(raw_dify, gateway, session, path, delivery, stream):
    transcript = load(path)
    mode, expected = transcript.app_mode, EXPECTED[path.name]
    response_bytes = http_response(transcript.body)
    if delivery == "dropped":
        response_bytes = response_bytes.removesuffix(LAST_CHUNK)
        expected = replace(expected, error=DISCONNECTED)
    raw_dify.answer = response_bytes if delivery == "whole" else tcp_pieces(response_bytes, path.name)
    raw_dify.pause = PIECE_PAUSE
    raw_dify.close_after = delivery == "dropped"
    calls_before = len(raw_dify.calls)
    body = {"model": MODELS[mode], "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    log_before = len(gateway.output())
    with session.post(gateway.base_url + "/chat/completions", json=body, headers=AUTH, stream=True,
                      timeout=CLIENT_TIMEOUT) as response:
        response.content  # noqa: B018 (reads the whole answer within the client's timeout)
        (check_stream if stream else check_body)(response, expected)
    runs = [call for call in raw_dify.calls[calls_before:] if call.method == "POST" and not call.path.endswith("/stop")]
    assert [(call.path, call.key) for call in runs] == [(RUN_ROUTES.get(mode, "/v1/chat-messages"), APP_KEYS[mode])]
    task_id = first_task_id(path)
    if delivery == "dropped" and task_id:
        stop = STOP_ROUTES.get(mode, "/v1/chat-messages/{}/stop").format(task_id)
        assert raw_dify.wait_for(lambda calls: any(call.path == stop for call in calls[calls_before:]), 10), stop
        stop_call = next(call for call in raw_dify.calls[calls_before:] if call.path == stop)
        assert stop_call.key == APP_KEYS[mode]
        assert json.loads(stop_call.body)["user"] == json.loads(runs[0].body)["user"], stop_call
    log = gateway.output()[log_before:]
    assert "Traceback" not in log and "[CRITICAL]" not in log, log[-3000:]
