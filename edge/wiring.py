"""The wiring: the worker's one `Gateway` on the Flask app, and the `Caller` of a request."""

from __future__ import annotations

from flask import Flask, current_app, g, request

from core.apps import DifyApp
from edge import observe
from edge.auth import dify_user_for
from engine.gateway import Caller, Gateway

_EXTENSION = "opendify"


def install_gateway(app: Flask, gateway: Gateway) -> None:
    app.extensions[_EXTENSION] = gateway


def current_gateway() -> Gateway:
    return current_app.extensions[_EXTENSION]


def resolve_app(model: str) -> DifyApp:
    """The Dify app a request's model names (engine/gateway.py's registry), noted for the
    request's metrics and log line."""
    app = current_gateway().registry.resolve(model)
    observe.reached_app(app.name, app.mode)
    return app


def current_caller(openai_user: str | None, conversation_id: str | None = None,
                   continues_message: str | None = None) -> Caller:
    """The caller of the request being served: its Dify user (edge/auth.py), the conversation
    it names (and the message it must end with), and its socket (gunicorn's workers put it in
    the WSGI environ)."""
    user_header = current_gateway().settings.user_header
    header_user = request.headers.get(user_header) if user_header else None
    return Caller(dify_user_for(openai_user, g.client_key, header_user), conversation_id,
                  request.environ.get("gunicorn.socket"), continues_message)
