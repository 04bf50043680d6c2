"""Speech to text and text to speech (README "Speech to text and text to speech"), through the
gateway to the emulator's transparent speech models (dify_emulator/README.md "Audio"): the
emulator hears uploaded bytes as UTF-8 text and speaks one framed chunk per word."""

from __future__ import annotations

import io

import openai
import pytest
import requests

from core.request.audio_request import dify_audio_mime
from dify_emulator.audio import spoken_words
from tests import raw_dify as raw_dify_module
from tests.conftest import CLIENT_KEY
from tests.scenarios import directive, wait_for

HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}
WORDS = "Where is the nearest train station?"


def audio_calls(emulator, path: str) -> list[dict]:
    return [record for record in emulator.requests() if record["path"] == path]


def transcribe(gateway, filename: str = "question.wav", content: bytes = WORDS.encode(), mime: str | None = "audio/wav",
               model: str = "demo-chat", **form: str) -> requests.Response:
    part = (filename, content, mime) if mime else (filename, content)
    return requests.post(gateway.base_url + "/audio/transcriptions", headers=HEADERS, timeout=60,
                         data={"model": model, **form}, files={"file": part})


# -- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("filename", "mime", "expected"), [
    ("a.wav", "audio/wav", "audio/wav"),
    ("a.wav", "audio/x-wav", "audio/wav"),  # what Python's mimetypes and browsers send; Dify refuses it as is
    ("a.bin", "audio/mpeg", "audio/mpeg"),
    ("voice.m4a", "application/octet-stream", "audio/m4a"),  # a generic type: the name decides
    ("clip.webm", "video/webm", "audio/webm"),
    ("notes.txt", "text/plain", None),
    ("song.flac", "audio/flac", None),
    ("noextension", None, None),
])
def test_the_audio_type_dify_is_sent(filename, mime, expected):
    assert dify_audio_mime(filename, mime) == expected


# -- transcriptions --------------------------------------------------------------------------


def test_the_openai_sdk_transcribes_through_the_app(client, recorded):
    audio = io.BytesIO(WORDS.encode())
    audio.name = "question.wav"
    result = client.audio.transcriptions.create(model="demo-chat", file=audio, language="en", prompt="Trains",
                                                temperature=0.2)
    assert result.text == WORDS
    [call] = audio_calls(recorded, "/v1/audio-to-text")
    assert call["app"] == "demo-chat"
    assert [(part["field"], part["filename"], part["mimetype"], part["size"]) for part in call["files"]] == [
        ("file", "question.wav", "audio/wav", len(WORDS.encode()))]
    assert set(call["form"]) == {"user"}  # language, prompt and temperature are not Dify's


def test_transcription_formats(gateway, client):
    text = transcribe(gateway, response_format="text")
    assert (text.status_code, text.headers["Content-Type"], text.text) == (200, "text/plain; charset=utf-8", WORDS)
    verbose = transcribe(gateway, response_format="verbose_json", language="de")
    assert verbose.json() == {"task": "transcribe", "language": "de", "duration": None, "text": WORDS, "segments": []}
    audio = io.BytesIO(WORDS.encode())
    audio.name = "question.mp3"
    assert client.audio.transcriptions.create(model="demo-chat", file=audio, response_format="text") == WORDS
    refused = transcribe(gateway, response_format="srt")
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "response_format"


def test_a_streamed_transcription_is_the_sse_events_the_sdk_reads(client, gateway):
    """Dify gives the transcript whole: one transcript.text.delta, transcript.text.done, [DONE]."""
    audio = io.BytesIO(WORDS.encode())
    audio.name = "question.wav"
    events = list(client.audio.transcriptions.create(model="demo-chat", file=audio, stream=True))
    assert [(event.type, getattr(event, "delta", None), getattr(event, "text", None)) for event in events] == [
        ("transcript.text.delta", WORDS, None), ("transcript.text.done", None, WORDS)]
    reply = transcribe(gateway, stream="true")
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.text == (f'data: {{"type":"transcript.text.delta","delta":"{WORDS}"}}\n\n'
                          f'data: {{"type":"transcript.text.done","text":"{WORDS}"}}\n\ndata: [DONE]\n\n')
    refused = transcribe(gateway, stream="maybe")
    assert refused.status_code == 400
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("stream", "invalid_value")


def test_the_dify_user_is_the_one_chats_use(gateway, recorded):
    assert transcribe(gateway, user="alice").status_code == 200
    chat = requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=60, json={
        "model": "demo-chat", "user": "alice", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 200
    [call] = audio_calls(recorded, "/v1/audio-to-text")
    [chat_call] = audio_calls(recorded, "/v1/chat-messages")
    assert call["form"]["user"] == chat_call["json"]["user"]


def test_a_mislabelled_wav_reaches_dify_with_the_type_dify_takes(gateway, recorded):
    reply = transcribe(gateway, mime="audio/x-wav")
    assert (reply.status_code, reply.json()) == (200, {"text": WORDS})
    [call] = audio_calls(recorded, "/v1/audio-to-text")
    assert call["files"][0]["mimetype"] == "audio/wav"


@pytest.mark.parametrize(("case", "status", "code", "param"), [
    ("speech to text off", 400, "speech_to_text_disabled", "model"),
    ("not audio", 400, "unsupported_audio_type", "file"),
    ("over 30 MB", 413, "audio_too_large", "file"),
    ("no file", 400, "missing_required_parameter", "file"),
    ("unknown model", 404, "model_not_found", "model"),
])
def test_transcription_refusals_come_before_dify_is_called(gateway, recorded, case, status, code, param):
    if case == "speech to text off":
        reply = transcribe(gateway, model="demo-agent")
    elif case == "not audio":
        reply = transcribe(gateway, filename="notes.txt", mime="text/plain")
    elif case == "over 30 MB":
        reply = transcribe(gateway, content=b"\0" * (30 * 1024 * 1024 + 1))
    elif case == "no file":
        reply = requests.post(gateway.base_url + "/audio/transcriptions", headers=HEADERS, timeout=60,
                              data={"model": "demo-chat"}, files={"other": ("x.wav", b"x", "audio/wav")})
    else:
        reply = transcribe(gateway, model="no-such-app")
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert audio_calls(recorded, "/v1/audio-to-text") == []


def test_the_sdk_sees_a_disabled_feature_as_a_bad_request(client):
    audio = io.BytesIO(b"hello")
    audio.name = "hello.wav"
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="demo-chatflow", file=audio)
    assert caught.value.code == "speech_to_text_disabled"
    assert "demo-chatflow" in caught.value.message


# -- speech ----------------------------------------------------------------------------------


def test_the_openai_sdk_gets_the_apps_speech(client, recorded):
    speech = client.audio.speech.create(model="demo-chat", voice="alloy", input="Hello there, world")
    assert speech.response.headers["Content-Type"] == "audio/mpeg"
    assert spoken_words(speech.content) == ["alloy:Hello", "alloy:there,", "alloy:world"]
    [call] = audio_calls(recorded, "/v1/text-to-audio")
    assert call["app"] == "demo-chat"
    assert {key: call["json"][key] for key in ("text", "voice")} == {"text": "Hello there, world", "voice": "alloy"}


def test_speech_without_a_voice_is_spoken_in_the_apps_voice(gateway):
    reply = requests.post(gateway.base_url + "/audio/speech", headers=HEADERS, timeout=60,
                          json={"model": "demo-chat", "input": "Hi"})
    assert (reply.status_code, spoken_words(reply.content)) == (200, ["emulator-voice:Hi"])


def test_speech_is_relayed_as_dify_produces_it_and_ends_when_the_client_leaves(gateway, emulator):
    """The first chunk reaches the client while Dify is still speaking (it never finishes here),
    and Dify's stream is closed once the client hangs up."""
    before = emulator.streams()["active"]
    text = f"First words {directive(never_end=True)}"
    with requests.post(gateway.base_url + "/audio/speech", headers=HEADERS, timeout=60, stream=True,
                       json={"model": "demo-chat", "input": text, "voice": "nova"}) as reply:
        assert reply.status_code == 200
        first = reply.raw.read(len(b"\xff\xfb\x90\x64") + 2 + len("nova:First"))
        assert spoken_words(first) == ["nova:First"]
        assert emulator.streams()["active"] == before + 1
    wait_for(lambda: emulator.streams()["active"] == before, "Dify's speech stream closed after the client left")


@pytest.mark.parametrize(("body", "status", "code", "param"), [
    ({"model": "demo-chat", "input": "Hi", "voice": "alloy", "response_format": "wav"}, 400, "unsupported_value",
     "response_format"),
    ({"model": "demo-chat", "input": "Hi", "voice": "alloy", "stream_format": "sse"}, 400, "unsupported_value",
     "stream_format"),
    ({"model": "demo-agent", "input": "Hi", "voice": "alloy"}, 400, "text_to_speech_disabled", "model"),
    ({"model": "demo-chat", "input": "", "voice": "alloy"}, 400, "missing_required_parameter", "input"),
    ({"model": "demo-chat", "input": "Hi", "voice": 3}, 400, "invalid_type", "voice"),
    ({"model": "nope", "input": "Hi"}, 404, "model_not_found", "model"),
])
def test_speech_refusals_come_before_dify_is_called(gateway, recorded, body, status, code, param):
    reply = requests.post(gateway.base_url + "/audio/speech", headers=HEADERS, timeout=60, json=body)
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"] == "application/json"
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert audio_calls(recorded, "/v1/text-to-audio") == []


def test_a_dify_failure_before_the_audio_is_an_openai_error(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.speech.create(model="demo-chat", voice="alloy",
                                   input=f"Hi {directive(http_error='provider_not_initialize')}")
    assert caught.value.status_code == 502  # the app's Dify side is misconfigured: retrying cannot help
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.code == "provider_not_initialize"


def test_speech_that_dify_breaks_off_reaches_the_client_truncated_never_complete_looking(gateway):
    text = f"one two three four {directive(reset_after=2)}"
    received = b""
    with requests.post(gateway.base_url + "/audio/speech", headers=HEADERS, timeout=60, stream=True,
                       json={"model": "demo-chat", "input": text, "voice": "echo"}) as reply:
        assert reply.status_code == 200
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in reply.iter_content(None):
                received += chunk
    assert spoken_words(received) == ["echo:one", "echo:two"]


@pytest.fixture(scope="module")
def raw_speech(raw_dify, start_gateway):
    """A gateway in front of the raw fake Dify, whose app has text to speech on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(raw_dify_module.PARAMETERS, "text_to_speech", {"enabled": True})
        gateway = start_gateway(DIFY_API_BASE=raw_dify.base_url, DIFY_API_KEYS="app-raw")
        yield openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_speech_that_fails_before_its_first_byte_is_an_error_body(raw_dify, raw_speech, framing):
    """Dify sent 200 and its headers, then its connection broke before any audio: the client gets
    a 502 with a JSON error, not a cut connection (which SDKs retry)."""
    length = "Transfer-Encoding: chunked" if framing == "chunked" else "Content-Length: 4096"
    raw_dify.answer = f"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\n{length}\r\n\r\n".encode()
    raw_dify.close_after = True
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            raw_speech.audio.speech.create(model="raw-chat", voice="alloy", input="Hello")
    finally:
        raw_dify.close_after = False
    assert caught.value.status_code == 502
    assert caught.value.response.headers["Content-Type"] == "application/json"
    assert caught.value.code == "upstream_disconnected"
    assert "before any audio" in caught.value.message
