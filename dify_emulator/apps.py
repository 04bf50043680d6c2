"""App configurations: the built-in demo apps, validation of app dicts, and the
metadata bodies (`/info`, `/parameters`, `/meta`, `/site`) derived from them."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

MODES = ("chat", "agent-chat", "advanced-chat", "agent", "completion", "workflow")
CHAT_MODES = frozenset({"chat", "agent-chat", "advanced-chat", "agent"})
PROFILES = ("modern", "restx", "legacy")
CHATFLOW_ORDERS = ("post1131", "pre113")
CONCURRENCY_ERRORS = ("429", "400")

#: Dify's default upload limits in MB, as reported by `/parameters`.
DEFAULT_SYSTEM_PARAMETERS = {
    "image_file_size_limit": 10,
    "video_file_size_limit": 100,
    "audio_file_size_limit": 50,
    "file_size_limit": 15,
    "workflow_file_upload_limit": 10,
}

_IMAGE_SETTINGS = {"number_limits": 3, "detail": "high", "transfer_methods": ["remote_url", "local_file"]}

CHAT_FILE_UPLOAD = {
    "enabled": True,
    "allowed_file_types": ["image", "document", "audio"],
    "allowed_file_extensions": [],
    "allowed_file_upload_methods": ["local_file", "remote_url"],
    "number_limits": 3,
    "image": {"enabled": True, **_IMAGE_SETTINGS},
}
NO_FILE_UPLOAD = {"image": {"enabled": False, **_IMAGE_SETTINGS}}

DEFAULT_APPS: list[dict[str, Any]] = [
    {
        "key": "app-demo-chat",
        "name": "demo-chat",
        "mode": "chat",
        "description": "Chatbot that echoes the question.",
        "file_upload": CHAT_FILE_UPLOAD,
        "speech_to_text": True,
        "text_to_speech": True,
    },
    {
        "key": "app-demo-agent",
        "name": "demo-agent",
        "mode": "agent-chat",
        "description": "Function-calling agent that calls current_time before answering.",
        "file_upload": CHAT_FILE_UPLOAD,
    },
    {
        "key": "app-demo-chatflow",
        "name": "demo-chatflow",
        "mode": "advanced-chat",
        "description": "Chatflow: start -> LLM -> answer.",
        "file_upload": CHAT_FILE_UPLOAD,
    },
    {
        "key": "app-demo-completion",
        "name": "demo-completion",
        "mode": "completion",
        "description": "Text generator fed by the `query` variable.",
        "user_input_form": [
            {"paragraph": {"label": "Query", "variable": "query", "required": True, "default": ""}},
        ],
    },
    {
        "key": "app-demo-workflow",
        "name": "demo-workflow",
        "mode": "workflow",
        "description": "Workflow: start -> LLM -> end, output `answer`.",
        "user_input_form": [
            {
                "paragraph": {
                    "label": "Text",
                    "variable": "text",
                    "required": True,
                    "default": "",
                    "type": "paragraph",
                }
            },
        ],
    },
]


@dataclass(frozen=True)
class App:
    """One configured Dify app, reachable with its API key."""

    key: str
    name: str
    mode: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    author_name: str = "Dify"
    user_input_form: list[dict[str, Any]] = field(default_factory=list)
    file_upload: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(NO_FILE_UPLOAD))
    system_parameters: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SYSTEM_PARAMETERS))
    info_has_mode: bool = True
    profile: str = "modern"
    chatflow_order: str = "post1131"
    ping_interval_s: float = 10.0
    max_active_requests: int = 0
    concurrency_error: str = "429"
    api_disabled: bool = False
    message_file_relabel: bool = False
    speech_to_text: bool = False
    text_to_speech: bool = False
    tts_voice: str = ""
    default_scenario: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable app id derived from the key (Dify's `App.id`)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "dify-emulator-app:" + self.key))

    @property
    def workflow_id(self) -> str:
        """Stable id of the app's published workflow (chatflow and workflow apps)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "dify-emulator-workflow:" + self.key))

    @property
    def file_upload_enabled(self) -> bool:
        """Dify drops request files silently unless file upload is enabled."""
        return bool(self.file_upload.get("enabled") or self.file_upload.get("image", {}).get("enabled"))

    def allowed_file_types(self) -> set[str] | None:
        """The file types a call may carry, as Dify's file factory checks them (None: any);
        an app with only the legacy image setting takes images."""
        if self.file_upload.get("enabled"):
            allowed = self.file_upload.get("allowed_file_types")
            return set(allowed) if allowed else None
        return {"image"} if self.file_upload.get("image", {}).get("enabled") else None

    def form_variables(self) -> list[tuple[str, dict[str, Any]]]:
        """The input form as (type, settings) pairs, in form order."""
        return [(kind, dict(settings)) for item in self.user_input_form for kind, settings in item.items()]


_FIELDS = set(App.__dataclass_fields__)


def build_app(raw: dict[str, Any]) -> App:
    """Validate one app dict and turn it into an App (unknown keys are errors, to catch typos)."""
    unknown = set(raw) - _FIELDS
    if unknown:
        raise ValueError(f"app {raw.get('key')!r}: unknown settings {sorted(unknown)}")
    for required in ("key", "name", "mode"):
        if not raw.get(required):
            raise ValueError(f"app config needs {required!r}: {raw!r}")
    settings = copy.deepcopy(raw)
    if "system_parameters" in settings:
        settings["system_parameters"] = {**DEFAULT_SYSTEM_PARAMETERS, **settings["system_parameters"]}
    settings["concurrency_error"] = str(settings.get("concurrency_error", "429"))
    app = App(**settings)
    for value, allowed, what in (
        (app.mode, MODES, "mode"),
        (app.profile, PROFILES, "profile"),
        (app.chatflow_order, CHATFLOW_ORDERS, "chatflow_order"),
        (app.concurrency_error, CONCURRENCY_ERRORS, "concurrency_error"),
    ):
        if value not in allowed:
            raise ValueError(f"app {app.key!r}: {what} must be one of {allowed}, not {value!r}")
    for flag in ("message_file_relabel", "speech_to_text", "text_to_speech"):
        if not isinstance(getattr(app, flag), bool):
            raise ValueError(f"app {app.key!r}: {flag} must be true or false")
    return app


def build_apps(raws: list[dict[str, Any]]) -> dict[str, App]:
    """Index app configs by key; keys must be unique."""
    apps: dict[str, App] = {}
    for raw in raws:
        app = build_app(raw)
        if app.key in apps:
            raise ValueError(f"duplicate app key {app.key!r}")
        apps[app.key] = app
    return apps


def info_body(app: App) -> dict[str, Any]:
    """`GET /v1/info`; servers before 1.4 only had name, description and tags."""
    body: dict[str, Any] = {"name": app.name, "description": app.description, "tags": list(app.tags)}
    if app.info_has_mode:
        body["mode"] = app.mode
        body["author_name"] = app.author_name
    return body


def parameters_body(app: App) -> dict[str, Any]:
    """`GET /v1/parameters`."""
    return {
        "opening_statement": "",
        "suggested_questions": [],
        "suggested_questions_after_answer": {"enabled": False},
        "speech_to_text": {"enabled": app.speech_to_text},
        "text_to_speech": {"enabled": app.text_to_speech, "voice": app.tts_voice, "language": "",
                           "autoPlay": "disabled"},
        "retriever_resource": {"enabled": True},
        "annotation_reply": {"enabled": False},
        "more_like_this": {"enabled": False},
        "user_input_form": copy.deepcopy(app.user_input_form),
        "sensitive_word_avoidance": {"enabled": False, "type": "", "configs": []},
        "file_upload": copy.deepcopy(app.file_upload),
        "system_parameters": dict(app.system_parameters),
    }


def meta_body(app: App) -> dict[str, Any]:
    """`GET /v1/meta`: tool icons, empty for apps without tools."""
    if app.mode != "agent-chat":
        return {"tool_icons": {}}
    return {"tool_icons": {"current_time": "/console/api/workspaces/current/tool-provider/builtin/time/icon"}}


def site_body(app: App) -> dict[str, Any]:
    """`GET /v1/site`."""
    return {
        "title": app.name,
        "chat_color_theme": None,
        "chat_color_theme_inverted": False,
        "icon_type": "emoji",
        "icon": "🤖",
        "icon_background": "#FFEAD5",
        "icon_url": None,
        "description": app.description,
        "copyright": None,
        "privacy_policy": None,
        "input_placeholder": None,
        "custom_disclaimer": "",
        "default_language": "en-US",
        "show_workflow_steps": True,
        "use_icon_as_answer_icon": False,
    }
