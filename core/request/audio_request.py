"""Validation of the audio requests: `POST /v1/audio/transcriptions` (speech to text, Dify's
`/audio-to-text`) and `POST /v1/audio/speech` (text to speech, Dify's `/text-to-audio`).

Dify's own limits are checked here, so the client learns them before Dify is called
(docs/dify.md 16): the audio types Dify transcribes, and at most 30 MB. Dify speaks
only MP3 (`audio/mpeg`), so a speech request for any other format is refused, and so is
`stream_format: "sse"` (speech comes as the audio itself). Dify gives a transcript whole, so
`stream: true` on a transcription gets it as one `transcript.text.delta` event, the
`transcript.text.done` event and `[DONE]` (`transcription_events`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import OpenAIError, invalid_request
from core.request.chat_request import optional_field, require_model
from core.request.files import Upload
from core.tolerant_json import compact

# Dify takes these audio types for speech to text (by MIME type: audio/<name>).
DIFY_AUDIO_TYPES = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm", "amr")
DIFY_AUDIO_MAX_BYTES = 30 * 1024 * 1024
# MIME types clients and Python send for those files, and the one Dify accepts.
_MIME_ALIASES = {"audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/vnd.wave": "audio/wav",
                 "audio/x-m4a": "audio/m4a", "audio/mp4a-latm": "audio/m4a", "video/mp4": "audio/mp4",
                 "video/webm": "audio/webm", "audio/x-mpeg": "audio/mpeg", "audio/mpeg3": "audio/mpeg"}
TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
SPEECH_FORMATS = ("mp3",)
SPEECH_STREAM_FORMATS = ("audio",)
# A multipart form's booleans, as the OpenAI SDKs and curl users write them.
_FORM_BOOLEANS = {"true": True, "1": True, "false": False, "0": False, "": False}


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str
    audio: Upload
    response_format: str
    language: str | None  # accepted: Dify's speech-to-text model chooses itself
    stream: bool = False  # the transcript as SSE events (`transcription_events`)


@dataclass(frozen=True)
class SpeechRequest:
    model: str
    text: str
    voice: str | None
    user: str | None


def parse_transcription_request(form: dict[str, str], filename: str | None, mime_type: str | None,
                                data: bytes | None) -> TranscriptionRequest:
    """A multipart transcription request: its form fields and its `file` part (None if absent)."""
    model = (form.get("model") or "").strip()
    if not model:
        raise invalid_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if data is None:
        raise invalid_request("'file' is required: send the audio as a multipart file part.", param="file",
                              code="missing_required_parameter")
    response_format = (form.get("response_format") or "json").strip()
    if response_format not in TRANSCRIPTION_FORMATS:
        raise invalid_request(f"'response_format' must be one of {', '.join(TRANSCRIPTION_FORMATS)}: Dify gives the "
                              "text without timings.", param="response_format", code="invalid_value")
    if len(data) > DIFY_AUDIO_MAX_BYTES:
        raise OpenAIError(413, "The audio file is larger than Dify's 30 MB limit for speech to text.", param="file",
                          code="audio_too_large")
    name = filename or "audio"
    audio_mime = dify_audio_mime(name, mime_type)
    if audio_mime is None:
        raise invalid_request(f"Unsupported audio file {name!r} ({mime_type or 'no type'}): Dify transcribes "
                              f"{', '.join(DIFY_AUDIO_TYPES)}.", param="file", code="unsupported_audio_type")
    stream = _FORM_BOOLEANS.get((form.get("stream") or "").strip().lower())
    if stream is None:
        raise invalid_request("'stream' must be true or false.", param="stream", code="invalid_value")
    return TranscriptionRequest(model, Upload(name, audio_mime, data), response_format,
                                (form.get("language") or "").strip() or None, stream)


def transcription_events(text: str) -> bytes:
    """The SSE body of a streamed transcription: Dify gives the text whole, so one delta
    with all of it, the done event, then `data: [DONE]` as every OpenDify stream but the
    Responses API's ends (the OpenAI SDKs stop at it)."""
    events = ({"type": "transcript.text.delta", "delta": text}, {"type": "transcript.text.done", "text": text})
    return b"".join(b"data: " + compact(event).encode("utf-8", "replace") + b"\n\n" for event in events) + \
        b"data: [DONE]\n\n"


def dify_audio_mime(filename: str, mime_type: str | None) -> str | None:
    """The MIME type Dify accepts for this audio (`audio/<type>`), from the part's type or,
    when that is generic or unknown, the file name's extension; None when Dify takes neither."""
    mime = _MIME_ALIASES.get((mime_type or "").lower(), (mime_type or "").lower())
    if mime in {f"audio/{kind}" for kind in DIFY_AUDIO_TYPES}:
        return mime
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension in DIFY_AUDIO_TYPES:
        return f"audio/{extension}"
    return None


def parse_speech_request(body: Any) -> SpeechRequest:
    model = require_model(body)
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise invalid_request("'input' must be the text to speak.", param="input", code="missing_required_parameter")
    voice = optional_field(body, "voice", str, "a string")
    response_format = body.get("response_format") or "mp3"
    if response_format not in SPEECH_FORMATS:
        raise invalid_request(f"'response_format' {response_format!r} is not available: Dify speaks MP3 only.",
                              param="response_format", code="unsupported_value")
    stream_format = body.get("stream_format") or "audio"
    if stream_format not in SPEECH_STREAM_FORMATS:
        raise invalid_request(f"'stream_format' {stream_format!r} is not available: Dify's speech is relayed as the "
                              "audio itself (stream_format 'audio'), not as SSE events.", param="stream_format",
                              code="unsupported_value")
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return SpeechRequest(model, text, voice or None, user)
