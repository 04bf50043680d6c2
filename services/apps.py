"""DIFY_API_KEYS -> the registry of Dify apps served as models.

Each key is looked up with `GET /info` and `GET /parameters`, concurrently, when the worker
starts, and again when the entry is older than APP_INFO_TTL (in the background; requests
keep using the stale entry). A key whose lookup fails keeps its last good entry, so a Dify
outage does not empty the model list.

Model ids: the app name with whitespace and `/` replaced by `-` (clients put the id in URL
paths); when two apps get the same id, the later key in DIFY_API_KEYS gets `-2`, `-3`, ...
Requests may also name an app by its exact Dify name.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import gevent

from services.dify_client import DifyClient
from services.errors import OpenAIError, model_not_found, server_error

log = logging.getLogger(__name__)

CHAT_MODES = {"chat", "agent-chat", "advanced-chat", "agent"}
# Dify's stop route by app mode (dify-api.md 7).
_STOP_ROUTES = {"completion": "/completion-messages/{}/stop", "workflow": "/workflows/tasks/{}/stop"}
# After a failed lookup, wait this long before a request may trigger another one.
_RETRY_AFTER_FAILURE = 5.0


@dataclass(frozen=True)
class DifyApp:
    key: str = field(repr=False)
    name: str
    mode: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    created: int = 0

    def stop_path(self, task_id: str) -> str:
        return _STOP_ROUTES.get(self.mode, "/chat-messages/{}/stop").format(task_id)


def model_id_for(name: str) -> str:
    return re.sub(r"[\s/]+", "-", name.strip()) or "dify-app"


class AppRegistry:
    def __init__(self, client: DifyClient, keys: tuple[str, ...], ttl: float) -> None:
        self._client = client
        self._keys = keys
        self._ttl = ttl
        self._apps: dict[str, DifyApp] = {}  # by key
        self._by_model: dict[str, DifyApp] = {}
        self._refreshed_at = 0.0
        self._failed_at = 0.0
        self._refreshing: gevent.Greenlet | None = None

    def start(self) -> None:
        """Begin the first lookup without blocking the worker's start."""
        self._refresh_in_background()

    def _refresh_in_background(self) -> gevent.Greenlet:
        if self._refreshing is None or self._refreshing.dead:
            self._refreshing = gevent.spawn(self._refresh)
        return self._refreshing

    def _refresh(self) -> None:
        jobs = {key: gevent.spawn(self._lookup, key) for key in self._keys}
        gevent.joinall(list(jobs.values()))
        failed = False
        for key, job in jobs.items():
            if job.value is not None:
                self._apps[key] = job.value
            else:
                failed = True
        now = time.monotonic()
        self._failed_at = now if failed else 0.0
        self._refreshed_at = now
        self._by_model = self._index()

    def _lookup(self, key: str) -> DifyApp | None:
        try:
            info = self._client.get_json(key, "/info")
            parameters = self._client.get_json(key, "/parameters")
        except OpenAIError as exc:
            log.warning("app lookup for key #%d failed: %s", self._keys.index(key) + 1, exc.message)
            return None
        previous = self._apps.get(key)
        return DifyApp(
            key=key,
            name=str(info.get("name") or f"dify-app-{self._keys.index(key) + 1}"),
            # Dify < 1.4 has no `mode` in /info; such apps are served as chat apps.
            mode=str(info.get("mode") or "chat"),
            description=str(info.get("description") or ""),
            parameters=parameters,
            created=previous.created if previous else int(time.time()),
        )

    def _index(self) -> dict[str, DifyApp]:
        index: dict[str, DifyApp] = {}
        for key in self._keys:
            app = self._apps.get(key)
            if app is None:
                continue
            base = model_id_for(app.name)
            model_id, suffix = base, 2
            while model_id in index:
                model_id, suffix = f"{base}-{suffix}", suffix + 1
            index[model_id] = app
        return index

    def _current(self) -> dict[str, DifyApp]:
        """The index, refreshed first when nothing was ever loaded or a key is missing."""
        now = time.monotonic()
        if self._refreshing is not None and not self._refreshing.dead and not self._by_model:
            self._refreshing.join(self._client.timeout)
        elif len(self._apps) < len(self._keys) and now - self._failed_at >= _RETRY_AFTER_FAILURE:
            self._refresh_in_background().join(self._client.timeout)
        elif now - self._refreshed_at >= self._ttl:
            self._refresh_in_background()
        return self._by_model

    def models(self) -> dict[str, DifyApp]:
        return dict(self._current())

    def resolve(self, model: str) -> DifyApp:
        index = self._current()
        app = index.get(model)
        if app is None:
            app = next((app for app in index.values() if app.name == model), None)
        if app is not None:
            return app
        if len(self._apps) < len(self._keys):
            # Some app could not be looked up: the name may belong to it.
            raise server_error(f"The model `{model}` is not known yet: Dify could not be reached to list the apps.",
                               503, "upstream_unavailable")
        raise model_not_found(model)
