"""Audio requests -> Dify's speech endpoints of the app the model names.

Speech to text and text to speech are app features in Dify (`/parameters`: `speech_to_text`,
`text_to_speech`); an app that has one switched off is refused here with a clear error
rather than by Dify's "... is not enabled" (docs/dify.md 16).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from core.apps import DifyApp
from core.errors import invalid_request
from core.request.audio_request import SpeechRequest, TranscriptionRequest
from dify_io.body_relay import relay_body

if TYPE_CHECKING:
    from engine.gateway import Caller, Gateway

# Dify's speech comes in pieces this large, as its text-to-speech model writes them.
_AUDIO_CHUNK = 16 * 1024


def transcribe(gateway: Gateway, app: DifyApp, request: TranscriptionRequest, caller: Caller) -> str:
    _require(app, request.model, "speech_to_text", "speech to text")
    return gateway.dify.transcribe(app.key, caller.dify_user, request.audio)


def speak(gateway: Gateway, app: DifyApp, request: SpeechRequest, caller: Caller) -> tuple[Iterator[bytes], str]:
    """Dify's speech as it arrives (dify_io/body_relay.py), and its content type; a failure
    before the first byte of audio is raised (an OpenAIError), not relayed."""
    _require(app, request.model, "text_to_speech", "text to speech")
    response = gateway.dify.speak(app.key, caller.dify_user, request.text, request.voice)
    content_type = response.headers.get("Content-Type") or "audio/mpeg"
    return relay_body(response, caller.client_socket, _AUDIO_CHUNK, gateway.settings.timeout), content_type


def _require(app: DifyApp, model: str, feature: str, name: str) -> None:
    setting = app.parameters.get(feature)
    if not (isinstance(setting, dict) and setting.get("enabled")):
        raise invalid_request(f"The Dify app `{model}` has {name} switched off: turn it on in the app's features.",
                              param="model", code=f"{feature}_disabled")
