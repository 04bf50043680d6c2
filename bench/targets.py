"""The two ways of asking for the same answer: Dify's API on the emulator, or OpenAI's on the gateway.

A `Target` turns an emulator directive into ready-to-send request bytes and knows how to
recognise a content event in its stream, so the load patterns in `bench.load` never care
which side they talk to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bench.http import build_request

DIFY_APP_KEY = "app-demo-chat"
GATEWAY_KEY = "sk-bench"
MODEL = "demo-chat"


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str
    api_key: str
    # Bytes that occur once in every SSE event carrying answer text, and in no other event.
    content_marker: bytes

    def request(self, directive: dict[str, Any], stream: bool = True) -> bytes:
        body = json.dumps(self.body(f"Benchmark question.\n@emulator {json.dumps(directive)}", stream)).encode()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        if stream:
            headers["Accept"] = "text/event-stream"
        return build_request("POST", self.host, self.port, self.path, headers, body)

    def body(self, text: str, stream: bool) -> dict[str, Any]:
        raise NotImplementedError


class DifyTarget(Target):
    """The emulator's `POST /chat-messages` (always streaming, like the gateway's own upstream call)."""

    def body(self, text: str, stream: bool) -> dict[str, Any]:
        return {"query": text, "inputs": {}, "response_mode": "streaming", "user": "bench", "conversation_id": ""}


class GatewayTarget(Target):
    """The gateway's `POST /chat/completions`."""

    def body(self, text: str, stream: bool) -> dict[str, Any]:
        return {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream}


class ResponsesTarget(Target):
    """The gateway's `POST /responses` (the Responses API)."""

    def body(self, text: str, stream: bool) -> dict[str, Any]:
        return {"model": MODEL, "input": text, "stream": stream}


def _host_port_path(base_url: str, route: str) -> tuple[str, int, str]:
    url = urlsplit(base_url)
    return url.hostname or "127.0.0.1", url.port or 80, url.path.rstrip("/") + route


def dify_target(base_url: str) -> DifyTarget:
    host, port, path = _host_port_path(base_url, "/chat-messages")
    # The emulator's demo apps write compact JSON (Dify >= 1.8.1): `"event":"message"`.
    return DifyTarget("direct", host, port, path, DIFY_APP_KEY, b'"event":"message"')


def responses_target(base_url: str) -> ResponsesTarget:
    host, port, path = _host_port_path(base_url, "/responses")
    return ResponsesTarget("responses", host, port, path, GATEWAY_KEY, b'"type":"response.output_text.delta"')


def gateway_target(base_url: str) -> GatewayTarget:
    host, port, path = _host_port_path(base_url, "/chat/completions")
    return GatewayTarget("gateway", host, port, path, GATEWAY_KEY, b'"delta":{"content":')
