"""The Flask application: Dify's `/v1` routes, request recording, error
rendering, and the `/_emulator/` control endpoints."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound

from . import audio, conversations, files, generation
from .apps import DEFAULT_APPS, App, build_apps, info_body, meta_body, parameters_body, site_body
from .errors import (
    WEB_API_RULES,
    DifyError,
    RawError,
    json_response,
    render_error,
    render_raw,
    unknown_error,
)
from .store import State
from .validation import authenticate

SERVER_VERSION = "1.16.1"
log = logging.getLogger("dify_emulator")


@dataclass
class Emulator:
    """What the views need: the apps by key, the state, and the profile used before auth."""

    apps: dict[str, App]
    state: State
    fallback_profile: str


def _emulator() -> Emulator:
    return current_app.extensions["dify_emulator"]


def create_app(apps: list[dict[str, Any]] | None = None) -> Flask:
    """Build the WSGI app for the given app configs (default: the five demo apps)."""
    by_key = build_apps(DEFAULT_APPS if apps is None else apps)
    profiles = {app.profile for app in by_key.values()}
    # Errors raised before an app is known (bad keys) use the common profile when all apps share one.
    fallback = profiles.pop() if len(profiles) == 1 else "modern"
    record = os.environ.get("EMULATOR_RECORD", "1") != "0"
    flask_app = Flask(__name__, static_folder=None)
    flask_app.extensions["dify_emulator"] = Emulator(by_key, State(record_requests=record), fallback)
    flask_app.before_request(_record_request)
    flask_app.register_error_handler(DifyError, _dify_error)
    flask_app.register_error_handler(RawError, render_raw)
    flask_app.register_error_handler(HTTPException, _http_error)
    flask_app.register_error_handler(Exception, _unexpected_error)
    for rule, view, methods in _ROUTES:
        flask_app.add_url_rule(rule, view.__name__, view, methods=methods)
    return flask_app


# -- hooks and error rendering ---------------------------------------------------------


def _record_request() -> None:
    """Keep every Dify API request for `GET /_emulator/requests` (off with EMULATOR_RECORD=0)."""
    emulator = _emulator()
    if not request.path.startswith("/v1") or not emulator.state.record_requests:
        return
    header = request.headers.get("Authorization", "")
    token = header.split(None, 1)[1].strip() if " " in header else None
    app = emulator.apps.get(token or "")
    uploads = []
    form: dict[str, Any] = {}
    body = None
    if request.mimetype == "multipart/form-data":
        form = request.form.to_dict()
        for field_name, part in request.files.items(multi=True):
            content = part.read()
            part.seek(0)
            uploads.append(
                {
                    "field": field_name,
                    "filename": part.filename,
                    "mimetype": part.mimetype,
                    "size": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            )
    else:
        body = request.get_json(silent=True)
    emulator.state.record(
        {
            "method": request.method,
            "path": request.path,
            "args": request.args.to_dict(),
            "app_key": token,
            "app": app.name if app else None,
            "headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "json": body,
            "form": form,
            "files": uploads,
            "client": f"{request.remote_addr}:{request.environ.get('REMOTE_PORT')}",  # one per connection
            "time": time.time(),
        }
    )


def _profile() -> str:
    app = g.get("dify_app")
    return app.profile if app is not None else _emulator().fallback_profile


def _dify_rules() -> list[str]:
    rules = [r.rule for r in current_app.url_map.iter_rules() if r.rule.startswith("/v1")]
    return rules + list(WEB_API_RULES)


def _dify_error(err: DifyError) -> Response:
    return render_error(err, _profile(), request.path, _dify_rules())


def _http_error(err: HTTPException) -> Response | HTTPException:
    """Werkzeug errors as Dify renders them; unknown URLs keep Flask's HTML 404 page."""
    if isinstance(err, NotFound) or not request.path.startswith("/v1"):
        return err
    code = "".join("_" + c.lower() if c.isupper() else c for c in type(err).__name__).lstrip("_")
    dify = DifyError(err.code or 500, code, err.description or "")
    response = render_error(dify, _profile(), request.path, _dify_rules())
    for name, value in err.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected_error(err: Exception) -> Response:
    log.exception("unexpected error in the Dify emulator")
    return render_error(unknown_error(), _profile(), request.path, [])


def _authenticated() -> App:
    app = authenticate(_emulator().apps)
    g.dify_app = app
    return app


# -- Dify routes -----------------------------------------------------------------------


def index() -> Response:
    return json_response({"welcome": "Dify OpenAPI", "api_version": "v1", "server_version": SERVER_VERSION})


def info() -> Response:
    return json_response(info_body(_authenticated()))


def parameters() -> Response:
    return json_response(parameters_body(_authenticated()))


def meta() -> Response:
    return json_response(meta_body(_authenticated()))


def site() -> Response:
    return json_response(site_body(_authenticated()))


def chat_messages() -> Response:
    return generation.chat_messages(_emulator().state, _authenticated())


def completion_messages() -> Response:
    return generation.completion_messages(_emulator().state, _authenticated())


def workflows_run() -> Response:
    return generation.workflows_run(_emulator().state, _authenticated())


def stop_chat(task_id: str) -> Response:
    return generation.stop_task(_emulator().state, _authenticated(), "chat", task_id)


def stop_completion(task_id: str) -> Response:
    return generation.stop_task(_emulator().state, _authenticated(), "completion", task_id)


def stop_workflow(task_id: str) -> Response:
    return generation.stop_task(_emulator().state, _authenticated(), "workflow", task_id)


def upload() -> Response:
    return files.upload_file(_emulator().state, _authenticated())


def audio_to_text() -> Response:
    return audio.speech_to_text(_emulator().state, _authenticated())


def text_to_audio() -> Response:
    return audio.text_to_speech(_emulator().state, _authenticated())


def list_conversations() -> Response:
    return conversations.list_conversations(_emulator().state, _authenticated())


def delete_conversation(c_id: Any) -> Response:
    return conversations.delete_conversation(_emulator().state, _authenticated(), str(c_id))


def rename_conversation(c_id: Any) -> Response:
    return conversations.rename_conversation(_emulator().state, _authenticated(), str(c_id))


def list_messages() -> Response:
    return conversations.list_messages(_emulator().state, _authenticated())


# -- control endpoints (no auth) -------------------------------------------------------


def control_requests() -> Response:
    return jsonify({"data": list(_emulator().state.requests)})


def control_stops() -> Response:
    return jsonify({"data": list(_emulator().state.stops)})


def control_streams() -> Response:
    return jsonify(_emulator().state.streams_snapshot())


def control_reset() -> Response:
    _emulator().state.reset()
    return jsonify({"result": "success"})


_ROUTES = (
    ("/v1/", index, ["GET"]),
    ("/v1/info", info, ["GET"]),
    ("/v1/parameters", parameters, ["GET"]),
    ("/v1/meta", meta, ["GET"]),
    ("/v1/site", site, ["GET"]),
    ("/v1/chat-messages", chat_messages, ["POST"]),
    ("/v1/chat-messages/<string:task_id>/stop", stop_chat, ["POST"]),
    ("/v1/completion-messages", completion_messages, ["POST"]),
    ("/v1/completion-messages/<string:task_id>/stop", stop_completion, ["POST"]),
    ("/v1/workflows/run", workflows_run, ["POST"]),
    ("/v1/workflows/tasks/<string:task_id>/stop", stop_workflow, ["POST"]),
    ("/v1/files/upload", upload, ["POST"]),
    ("/v1/audio-to-text", audio_to_text, ["POST"]),
    ("/v1/text-to-audio", text_to_audio, ["POST"]),
    ("/v1/conversations", list_conversations, ["GET"]),
    ("/v1/conversations/<uuid:c_id>", delete_conversation, ["DELETE"]),
    ("/v1/conversations/<uuid:c_id>/name", rename_conversation, ["POST"]),
    ("/v1/messages", list_messages, ["GET"]),
    ("/_emulator/requests", control_requests, ["GET"]),
    ("/_emulator/stops", control_stops, ["GET"]),
    ("/_emulator/streams", control_streams, ["GET"]),
    ("/_emulator/reset", control_reset, ["POST"]),
)
