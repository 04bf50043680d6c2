"""DIFY_API_KEYS -> the registry of Dify apps served as models.

Each key is looked up with `GET /info` and `GET /parameters`, concurrently, when the worker
starts, and again when the entry is older than APP_INFO_TTL (in the background; requests
keep using the stale entry). A key whose lookup fails keeps its last good entry, so a Dify
outage does not empty the model list.

Model ids and the names a request may use: core/apps.py (ModelIndex).
"""

from __future__ import annotations

import logging
import time

import gevent

from core.apps import DifyApp, ModelIndex
from core.errors import OpenAIError, model_not_found, upstream_failure
from dify_io.client import DifyClient

log = logging.getLogger(__name__)

# After a failed lookup, wait this long before a request may trigger another one.
_RETRY_AFTER_FAILURE = 5.0


class AppRegistry:
    def __init__(self, client: DifyClient, keys: tuple[str, ...], ttl: float,
                 aliases: tuple[tuple[str, str], ...] = (), default_model: str | None = None,
                 id_style: str = "exact") -> None:
        """`aliases` map other model names (e.g. gpt-4o-mini, which NextChat uses for topic
        summaries) to app models; `default_model` serves any unknown name (off: 404);
        `id_style` is MODEL_ID_STYLE."""
        self._client = client
        self._keys = keys
        self._ttl = ttl
        self._aliases = dict(aliases)
        self._default_model = default_model
        self._id_style = id_style
        self._apps: dict[str, DifyApp] = {}  # by key
        self._index = ModelIndex([])
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
        self._index = ModelIndex([self._apps[key] for key in self._keys if key in self._apps], self._id_style)

    def _lookup(self, key: str) -> DifyApp | None:
        try:
            info = self._client.get_json(key, "/info")
            parameters = self._client.get_json(key, "/parameters")
            previous = self._apps.get(key)
            # An app's mode never changes: infer it once (Dify < 1.4).
            mode = str(info.get("mode") or "") or (previous.mode if previous else self._infer_mode(key))
        except OpenAIError as exc:
            log.warning("app lookup for key #%d failed: %s", self._keys.index(key) + 1, exc.message)
            return None
        return DifyApp(
            key=key,
            name=str(info.get("name") or f"dify-app-{self._keys.index(key) + 1}"),
            mode=mode,
            description=str(info.get("description") or ""),
            parameters=parameters,
            created=previous.created if previous else int(time.time()),
        )

    def _infer_mode(self, key: str) -> str:
        """The mode of an app on Dify < 1.4, whose /info has none, from Dify's route checks.

        Dify checks the app mode before the request body, so a body without `query` and
        `inputs` is refused either for the mode (`not_chat_app`, `not_workflow_app`) or for
        the missing fields, and nothing runs. Chat, agent and chatflow apps are not told
        apart this way; all three are served through /chat-messages alike.
        """
        probe = {"user": "opendify-mode-probe"}
        if self._client.refusal_code(key, "/chat-messages", probe) != "not_chat_app":
            return "chat"
        if self._client.refusal_code(key, "/workflows/run", probe) != "not_workflow_app":
            return "workflow"
        return "completion"

    def _current(self) -> ModelIndex:
        """The index, refreshed first when nothing was ever loaded or a key is missing."""
        now = time.monotonic()
        if self._refreshing is not None and not self._refreshing.dead and not self._index:
            self._refreshing.join(self._client.timeout)
        elif len(self._apps) < len(self._keys) and now - self._failed_at >= _RETRY_AFTER_FAILURE:
            self._refresh_in_background().join(self._client.timeout)
        elif now - self._refreshed_at >= self._ttl:
            self._refresh_in_background()
        return self._index

    def models(self) -> dict[str, DifyApp]:
        """The served apps by their listed model ids, in DIFY_API_KEYS order."""
        return dict(self._current().listed)

    def model(self, name: str) -> tuple[str, DifyApp] | None:
        """(listed id, app) for any name of an app (see core/apps.py); aliases do not count."""
        index = self._current()
        app = index.find(name)
        return None if app is None else (index.id_of(app), app)

    def resolve(self, model: str) -> DifyApp:
        """The app a request's `model` selects: by any of its names, else by alias, else the
        DEFAULT_MODEL."""
        index = self._current()
        for name in (model, self._aliases.get(model), self._default_model):
            app = index.find(name) if name is not None else None
            if app is not None:
                return app
        if len(self._apps) < len(self._keys):
            # Some app could not be looked up: the name may belong to it.
            raise upstream_failure(f"The model `{model}` is not known yet: Dify could not be reached to list the apps.",
                               503, "upstream_unavailable")
        raise model_not_found(model)
