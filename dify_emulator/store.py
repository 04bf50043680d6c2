"""In-memory state of one emulator process: conversations, uploads, live tasks,
and the records served by the `/_emulator/` control endpoints.

State is per worker process; tests and benchmarks run a single worker so that
every request sees the same state.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

RECORD_LIMIT = 5000


@dataclass
class UploadedFile:
    id: str
    app_key: str
    user: str
    name: str
    size: int
    extension: str
    mime_type: str
    created_by: str
    created_at: int


@dataclass
class Message:
    id: str
    conversation_id: str
    query: str
    inputs: dict[str, Any]
    files: list[dict[str, Any]]
    created_at: int
    answer: str = ""
    status: str = "normal"
    error: str | None = None
    message_tokens: int = 0
    answer_tokens: int = 0
    agent_thoughts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Conversation:
    id: str
    app_key: str
    user: str
    name: str
    inputs: dict[str, Any]
    created_at: int
    updated_at: int
    messages: list[Message] = field(default_factory=list)


@dataclass
class LiveTask:
    """A stream in progress; the stop endpoints set `stop_requested`."""

    task_id: str
    app_key: str
    user: str
    mode: str
    stop_requested: bool = False


class State:
    """Everything the emulator remembers, owned by one Flask app instance."""

    def __init__(self, record_requests: bool = True) -> None:
        self.record_requests = record_requests
        self.requests: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)
        self.stops: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)
        self.started = 0
        self.finished = 0
        self.live: dict[str, LiveTask] = {}
        self.active_requests: dict[str, int] = {}
        self.conversations: dict[str, Conversation] = {}
        self.files: dict[str, UploadedFile] = {}
        self.end_users: dict[tuple[str, str], str] = {}

    # -- end users, conversations, files -------------------------------------------------

    def end_user_id(self, app_key: str, user: str) -> str:
        """Dify creates one EndUser per (app, user string); its id appears as `created_by`."""
        return self.end_users.setdefault((app_key, user), str(uuid.uuid4()))

    def find_conversation(self, app_key: str, user: str, conversation_id: str) -> Conversation | None:
        conversation = self.conversations.get(conversation_id)
        if conversation is None or conversation.app_key != app_key or conversation.user != user:
            return None
        return conversation

    def create_conversation(self, app_key: str, user: str, name: str, inputs: dict[str, Any]) -> Conversation:
        now = int(time.time())
        conversation = Conversation(str(uuid.uuid4()), app_key, user, name, inputs, now, now)
        self.conversations[conversation.id] = conversation
        return conversation

    def user_conversations(self, app_key: str, user: str) -> list[Conversation]:
        return [c for c in self.conversations.values() if c.app_key == app_key and c.user == user]

    def delete_conversation(self, conversation_id: str) -> None:
        self.conversations.pop(conversation_id, None)

    def add_file(self, upload: UploadedFile) -> None:
        self.files[upload.id] = upload

    def find_file(self, app_key: str, user: str, file_id: str) -> UploadedFile | None:
        upload = self.files.get(file_id)
        if upload is None or upload.app_key != app_key or upload.user != user:
            return None
        return upload

    # -- concurrency limit ---------------------------------------------------------------

    def acquire_slot(self, app_key: str, limit: int) -> bool:
        """Take one of the app's `max_active_requests` slots (0 = unlimited)."""
        active = self.active_requests.get(app_key, 0)
        if limit and active >= limit:
            return False
        self.active_requests[app_key] = active + 1
        return True

    def release_slot(self, app_key: str) -> None:
        self.active_requests[app_key] = max(0, self.active_requests.get(app_key, 0) - 1)

    # -- streams and stops ---------------------------------------------------------------

    def stream_started(self, task: LiveTask) -> None:
        self.started += 1
        self.live[task.task_id] = task

    def stream_finished(self, task_id: str) -> None:
        self.finished += 1
        self.live.pop(task_id, None)

    def request_stop(self, path: str, app_key: str, task_id: str, user: str, check_user: bool) -> None:
        """Record a stop call and flag the task if it is live and belongs to the caller.

        Like Dify, a stop for an unknown task or another user is silently ignored.
        """
        self.stops.append({"path": path, "task_id": task_id, "user": user, "app_key": app_key, "time": time.time()})
        task = self.live.get(task_id)
        if task is None or task.app_key != app_key or (check_user and task.user != user):
            return
        task.stop_requested = True

    def streams_snapshot(self) -> dict[str, Any]:
        return {
            "active": len(self.live),
            "started": self.started,
            "finished": self.finished,
            "active_tasks": list(self.live),
        }

    def record(self, entry: dict[str, Any]) -> None:
        if self.record_requests:
            self.requests.append(entry)

    def reset(self) -> None:
        """Clear the records and stream counters; conversations and files survive.

        Streams still open stay counted as started, so `active` keeps its meaning.
        """
        self.requests.clear()
        self.stops.clear()
        self.started = len(self.live)
        self.finished = 0
