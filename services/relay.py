"""One Dify call relayed to one client.

`ChatRelay` reads the upstream stream, runs each Dify event through the translator and hands
out batches of output items: several Dify events that arrived together become one batch
(one client write). While Dify is silent it hands out a keep-alive item every
KEEPALIVE_INTERVAL, which is also how a vanished client is noticed (the next write fails).
When the relay is closed before Dify finished (client gone, upstream fault) the upstream
connection is dropped and Dify's stop endpoint is called for the task, with the same
`user`, in the background.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import requests

from services.apps import DifyApp
from services.dify_client import DifyClient
from services.errors import OpenAIError
from services.translate import ERROR, PING, PING_ITEM, DifyEventTranslator
from services.upstream import UpstreamStream

Item = tuple[str, Any]


class ChatRelay:
    def __init__(self, client: DifyClient, app: DifyApp, dify_user: str, open_response: Callable[[], requests.Response],
                 keepalive_interval: float, translator: DifyEventTranslator) -> None:
        self._client = client
        self._app = app
        self._dify_user = dify_user
        self._upstream = UpstreamStream(open_response)
        self._keepalive = keepalive_interval
        self.translator = translator
        self._done = False

    def _next_batch(self, timeout: float) -> list[Item]:
        try:
            events = self._upstream.read(timeout)
        except OpenAIError as exc:
            self._done = True
            return [(ERROR, exc)]
        if events is None:
            items = self.translator.feed_eof()
        elif not events:
            return [PING_ITEM]
        else:
            items = []
            feed = self.translator.feed
            for event in events:
                items += feed(event)
                if self.translator.finished:
                    break
        if self.translator.finished:
            self._done = True
        return items

    def prefetch(self, wait: float) -> list[Item]:
        """Items up to the first one that is not a keep-alive, waiting at most `wait` s.

        A stream request is committed to HTTP 200 only after this, so a Dify failure before
        the first token (its refusal of the call included) can still be answered with a real
        HTTP status.
        """
        deadline = time.monotonic() + wait
        items: list[Item] = []
        while not self._done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch = [item for item in self._next_batch(remaining) if item[0] != PING]
            items += batch
            if batch:
                break
        return items

    def batches(self) -> Iterator[list[Item]]:
        while not self._done:
            batch = self._next_batch(self._keepalive)
            if batch:
                yield batch

    def close(self) -> None:
        finished = self.translator.finished
        self._upstream.close(finished)
        task_id = self.translator.task_id
        if not finished and task_id:
            gevent.spawn(self._client.stop, self._app.key, self._app.stop_path(task_id), self._dify_user)
