"""How fast this machine runs Python, so figures from different machines can be compared.

CPU figures in microseconds depend as much on the machine as on the gateway. The reference
workload is what the relay does per event: decode one Dify event, encode one OpenAI chunk.
"""

from __future__ import annotations

import json
import time

_EVENT = (b'{"event":"message","conversation_id":"3c1e0b6a-5a1f-4b7e-9a43-0f6f0c2d9a11","message_id":'
          b'"f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44","created_at":1735689600,"task_id":'
          b'"9d3c2b1a-7e6f-4d5c-8b9a-0e1f2a3b4c5d","id":"f2b8f2d6-1c0e-4c5e-8a9f-2f6b1d7e3c44","answer":"w42 "}')


def _once() -> None:
    event = json.loads(_EVENT)
    chunk = {"id": "chatcmpl-0", "object": "chat.completion.chunk", "created": event["created_at"],
             "model": "demo-chat", "choices": [{"index": 0, "delta": {"content": event["answer"]},
                                                "finish_reason": None}]}
    json.dumps(chunk, separators=(",", ":"))


def reference_us(rounds: int = 5, repeat: int = 2000) -> float:
    """Microseconds per decode+encode, best of `rounds` (lower is a faster machine)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(repeat):
            _once()
        best = min(best, (time.perf_counter() - started) / repeat)
    return best * 1e6
