"""POST /v1/audio-to-text and POST /v1/text-to-audio (docs/dify.md 16).

Both follow the app's `speech_to_text` / `text_to_speech` settings as Dify does, with Dify's
checks in Dify's order. The emulator has no speech models, so its models are transparent:
speech to text "hears" the audio bytes as UTF-8 text (tests upload the words they want
heard), and text to speech "speaks" one MP3-framed chunk per word, which a test can decode
back with `spoken_words`. A directive in the text to speak (`delay_ms`, `never_end`,
`reset_after`, `http_error`) shapes the speech stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from flask import Response, request

from .apps import App
from .conversations import DEFAULT_USER
from .errors import DifyError, invalid_param, json_response, named_http_error
from .runner import abort_connection, wait_blocking
from .scenario import build_scenario, extract_directives, split_words
from .store import LiveTask, State
from .validation import read_json_body

# Dify's AudioService: the types it transcribes (as `audio/<type>` MIME types) and its limit.
AUDIO_TYPES = ("mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm", "amr")
AUDIO_LIMIT_MB = 30
# The first voice of the emulated TTS model, used when neither the request nor the app names one.
DEFAULT_VOICE = "emulator-voice"
# An MPEG-1 Layer III frame header: what each spoken chunk starts with.
_FRAME = b"\xff\xfb\x90\x64"


def speech_to_text(state: State, app: App) -> Response:
    if not app.speech_to_text:
        raise invalid_param("Speech to text is not enabled")
    part = request.files.get("file")
    if part is None:
        raise DifyError(400, "no_audio_uploaded", "Please upload your audio.")
    if part.mimetype not in {f"audio/{kind}" for kind in AUDIO_TYPES}:
        raise DifyError(415, "unsupported_audio_type", "Audio type not allowed.")
    content = part.read()
    if len(content) > AUDIO_LIMIT_MB * 1024 * 1024:
        raise DifyError(413, "audio_too_large", f"Audio size exceeded. Audio size larger than {AUDIO_LIMIT_MB} mb")
    try:
        heard = content.decode("utf-8")
    except UnicodeDecodeError:
        heard = f"[{len(content)} bytes of {part.mimetype}]"
    return json_response({"text": heard})


def text_to_speech(state: State, app: App) -> Response:
    body = read_json_body()
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise invalid_param("Text is required")
    if not app.text_to_speech:
        raise invalid_param("TTS is not enabled")
    text, directive = extract_directives(text)
    scenario = build_scenario({}, directive)
    if scenario.http_error is not None:
        raise named_http_error(scenario.http_error, app.id, app.concurrency_error)
    voice = body.get("voice") if isinstance(body.get("voice"), str) and body.get("voice") else None
    voice = voice or app.tts_voice or DEFAULT_VOICE
    user = body.get("user") if isinstance(body.get("user"), str) else DEFAULT_USER
    task = LiveTask(str(uuid.uuid4()), app.key, user, "tts")
    sock = request.environ.get("gunicorn.socket")

    def speech() -> Iterator[bytes]:
        state.stream_started(task)
        try:
            for index, word in enumerate(split_words(text.strip()) or [""]):
                if index and scenario.delay_ms and not wait_blocking(scenario.delay_ms / 1000, sock):
                    return
                if scenario.reset_after is not None and index == scenario.reset_after:
                    abort_connection(sock, settle=0.05)
                yield spoken_chunk(word.strip(), voice)
                if scenario.never_end:
                    wait_blocking(float("inf"), sock)
                    return
        finally:
            state.stream_finished(task.task_id)

    return Response(speech(), content_type="audio/mpeg")


def spoken_chunk(word: str, voice: str) -> bytes:
    """One emulated MP3 chunk: a frame header, then `voice:word` as UTF-8, length-prefixed."""
    payload = f"{voice}:{word}".encode()
    return _FRAME + len(payload).to_bytes(2, "big") + payload


def spoken_words(audio: bytes) -> list[str]:
    """The `voice:word` payloads of emulated speech, in order (for tests)."""
    words = []
    while audio:
        if not audio.startswith(_FRAME) or len(audio) < 6:
            raise ValueError("not emulated speech")
        size = int.from_bytes(audio[4:6], "big")
        words.append(audio[6:6 + size].decode())
        audio = audio[6 + size:]
    return words
