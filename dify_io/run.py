"""One Dify run: the call that starts its task and the call that stops it.

The routes by app mode live here and nowhere else (docs/dify.md 4-7): chat-family apps
(chat, agent-chat, advanced-chat, agent) run on /chat-messages, completion apps on
/completion-messages, workflow apps on /workflows/run, and each has its own stop route.
A stop names the task and must carry the same `user` as the run (Dify checks it).
"""

from __future__ import annotations

from typing import Any

import requests

from core.apps import DifyApp
from dify_io import metrics
from dify_io.client import DifyClient

# (run route, stop route) by app mode; chat-family apps otherwise.
_ROUTES = {
    "completion": ("/completion-messages", "/completion-messages/{}/stop"),
    "workflow": ("/workflows/run", "/workflows/tasks/{}/stop"),
}
_CHAT_ROUTES = ("/chat-messages", "/chat-messages/{}/stop")


class DifyRun:
    """The handle a relay keeps for its Dify task. It holds no request body: a held stream
    must not keep the prompt (in memory mode 1 the whole history) alive."""

    __slots__ = ("client", "_app_key", "_run_route", "_stop_route", "_user")

    def __init__(self, client: DifyClient, app: DifyApp, dify_user: str) -> None:
        self.client = client
        self._app_key = app.key
        self._run_route, self._stop_route = _ROUTES.get(app.mode, _CHAT_ROUTES)
        self._user = dify_user

    def start(self, payload: dict[str, Any]) -> requests.Response:
        """POST the streaming call; returns once Dify sent its headers (refusals raise OpenAIError)."""
        return self.client.open_stream(self._app_key, self._run_route, payload)

    def stop(self, task_id: str) -> None:
        """Ask Dify to stop the task (best effort; see DifyClient.stop)."""
        metrics.stop_call()
        self.client.stop(self._app_key, self._stop_route.format(task_id), self._user)
