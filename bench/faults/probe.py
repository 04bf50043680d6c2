"""One request through the gateway, bounded in time, and what its client saw.

An `Outcome` records the HTTP status and error code, or for a stream that started (200)
the text it carried, its error event and whether `data: [DONE]` ended it. `problem` is set
for the outcomes that count as a failure of the gateway: no answer within the bound, no
HTTP response at all, an error body (or stream event) that is not JSON, a 200 non-stream
body carrying an error.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import gevent

from bench.http import Connection, Response, build_request
from bench.targets import GATEWAY_KEY, MODEL


@dataclass
class Outcome:
    stream: bool
    status: int | None = None
    code: str | None = None  # the error's code: from the error body, or the stream's error event
    message: str = ""
    text_chars: int = 0  # answer text received (all content deltas, or the message's content)
    done: bool = False  # a stream ended with `data: [DONE]`
    broken: str | None = None  # the connection failed or the bound ran out
    problem: str | None = None  # why this counts as a gateway failure
    seconds: float = 0.0

    def summary(self) -> str:
        if self.status is None:
            return f"no response ({self.broken})"
        if self.status != 200:
            return f"{self.status} {self.code or '(no code)'}"
        parts = [f"200 {_size(self.text_chars)}"]
        if self.code:
            parts.append(f"error {self.code}")
        if self.broken:
            parts.append(f"broke: {self.broken}")
        if self.stream:
            parts.append("[DONE]" if self.done else "no [DONE]")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(chars: int) -> str:
    return f"{chars / 1e6:.1f}M chars" if chars >= 100_000 else f"{chars} chars"


PROBE_TEXT = "Fault probe."


def chat_request(base_url: str, directive: dict[str, Any], stream: bool, model: str = MODEL,
                 text: str = PROBE_TEXT) -> bytes:
    """`POST /chat/completions` whose user message is `text` and an emulator directive."""
    url = urlsplit(base_url)
    content = f"{text}\n@emulator {json.dumps(directive)}"
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    headers = {"Authorization": f"Bearer {GATEWAY_KEY}", "Content-Type": "application/json"}
    return build_request("POST", url.hostname or "127.0.0.1", url.port or 80,
                         url.path.rstrip("/") + "/chat/completions", headers, json.dumps(body).encode())


def get_request(root_url: str, path: str) -> bytes:
    url = urlsplit(root_url)
    return build_request("GET", url.hostname or "127.0.0.1", url.port or 80, path, {}, b"")


def send(root_url: str, raw: bytes, stream: bool, bound: float) -> Outcome:
    """Send `raw` on a new connection and read the whole answer, within `bound` seconds."""
    outcome = Outcome(stream)
    url = urlsplit(root_url)
    started = time.perf_counter()
    conn = None
    try:
        with gevent.Timeout(bound):
            conn = Connection(url.hostname or "127.0.0.1", url.port or 80, timeout=bound)
            response = conn.request(raw)
            outcome.status = response.status
            if response.status == 200 and stream:
                _read_stream(response, outcome)
            else:
                _read_json(response, outcome)
    except gevent.Timeout:
        outcome.broken = f"no answer within {bound:g} s"
        outcome.problem = "hang"
    except Exception as exc:  # refused, reset, closed early: what the client saw
        outcome.broken = f"{type(exc).__name__}: {exc}"[:120]
        if outcome.status is None:
            outcome.problem = "no HTTP response"
    finally:
        if conn is not None:
            conn.close()
        outcome.seconds = time.perf_counter() - started
    return outcome


def _read_json(response: Response, outcome: Outcome) -> None:
    body = response.read()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if outcome.status != 200:
        if not isinstance(error, dict):
            outcome.problem = f"error body is not an OpenAI error: {body[:80]!r}"
            return
        outcome.code, outcome.message = error.get("code"), str(error.get("message"))[:200]
        return
    if not isinstance(data, dict) or error is not None or not data.get("choices"):
        outcome.problem = f"200 body is not a completion: {body[:80]!r}"
        return
    outcome.text_chars = len(data["choices"][0]["message"].get("content") or "")


def _read_stream(response: Response, outcome: Outcome) -> None:
    pending = b""
    for chunk in response.chunks():
        complete, _, pending = (pending + chunk).rpartition(b"\n\n")
        for event in complete.split(b"\n\n"):
            _stream_event(event, outcome)


def _stream_event(event: bytes, outcome: Outcome) -> None:
    for line in event.split(b"\n"):
        if not line.startswith(b"data:"):
            continue  # blank, or a `: ping` comment
        payload = line[5:].strip()
        if payload == b"[DONE]":
            outcome.done = True
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            outcome.problem = f"stream event is not JSON: {payload[:80]!r}"
            continue
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            outcome.code = data["error"].get("code")
            outcome.message = str(data["error"].get("message"))[:200]
            continue
        for choice in data.get("choices") or []:
            outcome.text_chars += len((choice.get("delta") or {}).get("content") or "")
