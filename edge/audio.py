"""POST /v1/audio/transcriptions and /v1/audio/speech: Dify's speech to text and text to speech.

Parse the request (core/request/audio_request.py), call Dify (engine/audio.py), and answer in
the shape the OpenAI client asked for: the transcript as JSON, plain text or verbose JSON, or
with `stream: true` as SSE events (Dify gives the text whole: one delta, then done); the speech
relayed as it arrives, with Dify's content type.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from core.request.audio_request import parse_speech_request, parse_transcription_request, transcription_events
from edge.event_stream import SSE_CONTENT_TYPE, STREAM_HEADERS
from edge.hooks import read_json
from edge.wiring import current_caller, current_gateway, resolve_app
from engine.audio import speak, transcribe

bp = Blueprint("audio", __name__)


@bp.post("/audio/transcriptions")
def transcriptions() -> Response:
    upload = request.files.get("file")
    parsed = parse_transcription_request(request.form.to_dict(), upload.filename if upload else None,
                                         upload.mimetype if upload else None, upload.read() if upload else None)
    text = transcribe(current_gateway(), resolve_app(parsed.model), parsed, current_caller(request.form.get("user")))
    if parsed.stream:  # after Dify answered: a failure is still a real HTTP status
        return Response(transcription_events(text), headers=STREAM_HEADERS, content_type=SSE_CONTENT_TYPE)
    if parsed.response_format == "text":
        return Response(text, mimetype="text/plain")
    if parsed.response_format == "verbose_json":
        # Dify gives the text alone: no duration, segments or words to report.
        return jsonify({"task": "transcribe", "language": parsed.language or "", "duration": None, "text": text,
                        "segments": []})
    return jsonify({"text": text})


@bp.post("/audio/speech")
def speech() -> Response:
    parsed = parse_speech_request(read_json())
    audio, content_type = speak(current_gateway(), resolve_app(parsed.model), parsed, current_caller(parsed.user))
    return Response(audio, content_type=content_type)
