"""Images, documents and audio in messages reach Dify as files (checked in what Dify received)."""

from __future__ import annotations

import base64
import hashlib

import openai
import pytest
import requests

from dify_emulator.control import start_emulator
from tests.conftest import CLIENT_KEY
from tests.test_chat_completions import EXPECTED_USER
from tests.test_http_surface import assert_openai_error

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
                       "AAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def ask(client, parts, **kwargs):
    return client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": parts}], **kwargs)


def records(emulator, path):
    return [record for record in emulator.requests() if record["path"] == path]


@pytest.mark.parametrize("stream", [False, True])
def test_data_url_image_is_uploaded_and_sent_as_local_file(client, recorded, stream):
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": data_url("image/png", PNG), "detail": "low"}}]
    reply = ask(client, parts, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in reply) if stream else reply.choices[0].message.content
    assert text == "You said: what is this?"
    [upload] = records(recorded, "/v1/files/upload")
    assert upload["form"]["user"] == EXPECTED_USER
    [file] = upload["files"]
    assert (file["mimetype"], file["filename"], file["size"]) == ("image/png", "image.png", len(PNG))
    assert file["sha256"] == hashlib.sha256(PNG).hexdigest()
    [call] = records(recorded, "/v1/chat-messages")
    [dify_file] = call["json"]["files"]
    assert dify_file["type"] == "image" and dify_file["transfer_method"] == "local_file"
    assert dify_file["upload_file_id"] and call["json"]["user"] == EXPECTED_USER


@pytest.mark.parametrize("mode", ["0", "1", "2"])
def test_a_user_turn_of_files_alone_is_sent_with_a_placeholder_query(start_gateway, recorded, mode):
    image = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
    with start_gateway(CONVERSATION_MEMORY_MODE=mode) as gateway:
        client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
        reply = ask(client, [image]).choices[0].message.content
        messages = [{"role": "user", "content": [image]}, {"role": "assistant", "content": reply},
                    {"role": "user", "content": [AUDIO_PART]}]
        client.chat.completions.create(model="demo-chat", messages=messages)
    first, second = (record["json"] for record in records(recorded, "/v1/chat-messages"))
    assert reply.startswith("You said: (See the attached file.)")
    assert first["query"] == "(See the attached file.)" and first["files"][0]["url"] == image["image_url"]["url"]
    expected = {"0": "(See the attached file.)", "2": "(See the attached file.)",
                "1": "User:\n(See the attached file.)\n\nAssistant:\nYou said: (See the attached file.)\n\n"
                     "Current question:\n(See the attached file.)"}
    assert second["query"] == expected[mode] and bool(second["conversation_id"]) == (mode == "2")
    assert [file["type"] for file in second["files"]] == (["image", "audio"] if mode == "1" else ["audio"])


def test_a_user_that_is_not_valid_utf8_uploads_as_valid_utf8(http, recorded):
    # JSON can carry a lone surrogate ("\\ud800", as requests writes it); a multipart form cannot.
    parts = [{"type": "text", "text": "what is this?"},
             {"type": "image_url", "image_url": {"url": data_url("image/png", PNG)}}]
    response = http("POST", "/v1/chat/completions",
                    json={"model": "demo-chat", "user": "\ud800", "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == \
        "You said: what is this?"
    [upload] = records(recorded, "/v1/files/upload")
    [call] = records(recorded, "/v1/chat-messages")
    assert upload["form"]["user"] == call["json"]["user"] == "?"


def test_remote_image_url_is_passed_not_fetched(client, recorded):
    url = "https://images.example.invalid/cat.png"
    ask(client, [{"type": "text", "text": "and this?"}, {"type": "image_url", "image_url": {"url": url}}])
    assert records(recorded, "/v1/files/upload") == []
    [call] = records(recorded, "/v1/chat-messages")
    assert call["json"]["files"] == [{"type": "image", "transfer_method": "remote_url", "url": url}]


def test_file_and_audio_parts_are_uploaded_with_their_types(client, recorded):
    parts = [{"type": "text", "text": "summarise"},
             {"type": "file", "file": {"filename": "report.pdf", "file_data": data_url("application/pdf", PDF)}},
             {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF....WAVE").decode(),
                                                     "format": "wav"}}]
    ask(client, parts)
    uploads = [record["files"][0] for record in records(recorded, "/v1/files/upload")]
    assert [(u["filename"], u["mimetype"]) for u in uploads] == [("report.pdf", "application/pdf"),
                                                                  ("audio.wav", "audio/wav")]
    [call] = records(recorded, "/v1/chat-messages")
    assert [f["type"] for f in call["json"]["files"]] == ["document", "audio"]


@pytest.mark.parametrize(("part", "code"), [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,###not-base64###"}}, "invalid_base64"),
    ({"type": "image_url", "image_url": {"url": data_url("text/plain", b"hello")}}, "invalid_image"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.invalid/a.png"}}, "invalid_value"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "aiff"}}, "invalid_value"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, "unsupported_parameter"),
])
def test_bad_file_parts_are_400_naming_the_part(http, recorded, part, code):
    body = {"model": "demo-chat", "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]}
    assert_openai_error(http("POST", "/v1/chat/completions", json=body), 400, code, "messages[0].content[1]")
    assert records(recorded, "/v1/chat-messages") == []


def test_files_over_the_limit_are_413(start_gateway, recorded):
    gateway = start_gateway(MAX_UPLOAD_MB="0.001")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    big = data_url("image/png", PNG + b"\0" * 2048)
    with pytest.raises(openai.APIStatusError) as caught:
        ask(client, [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": big}}])
    assert caught.value.status_code == 413 and caught.value.body["code"] == "file_too_large"
    assert records(recorded, "/v1/files/upload") == []


def test_mode_2_sends_only_the_new_turns_files(start_gateway, recorded):
    gateway = start_gateway(CONVERSATION_MEMORY_MODE="2")
    client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    first_image = {"type": "image_url", "image_url": {"url": "https://example.invalid/1.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "first"}, first_image]}]
    reply = client.chat.completions.create(model="demo-chat", messages=messages).choices[0].message.content
    second_image = {"type": "image_url", "image_url": {"url": "https://example.invalid/2.png"}}
    messages += [{"role": "assistant", "content": reply},
                 {"role": "user", "content": [{"type": "text", "text": "second"}, second_image]}]
    client.chat.completions.create(model="demo-chat", messages=messages)
    first_call, second_call = (record["json"] for record in records(recorded, "/v1/chat-messages"))
    assert [f["url"] for f in first_call["files"]] == ["https://example.invalid/1.png"]
    assert [f["url"] for f in second_call["files"]] == ["https://example.invalid/2.png"]
    assert second_call["conversation_id"] and second_call["query"] == "second"


IMAGE_ONLY_APPS = [
    {"key": "app-images", "name": "images-only", "mode": "chat",
     "file_upload": {"enabled": True, "allowed_file_types": ["image"], "allowed_file_extensions": [],
                     "allowed_file_upload_methods": ["local_file", "remote_url"], "number_limits": 3}},
    {"key": "app-legacy-images", "name": "legacy-images", "mode": "chat",
     "file_upload": {"image": {"enabled": True, "number_limits": 3, "detail": "high",
                               "transfer_methods": ["remote_url", "local_file"]}}},
]
AUDIO_PART = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF....WAVE").decode(),
                                                     "format": "wav"}}


@pytest.fixture(scope="module")
def image_only_dify():
    with start_emulator(apps=IMAGE_ONLY_APPS) as emulator:
        yield emulator


@pytest.mark.parametrize("model", ["images-only", "legacy-images"])
def test_a_file_type_the_app_does_not_take_is_refused_before_any_upload(start_gateway, image_only_dify, model):
    gateway = start_gateway(DIFY_API_BASE=image_only_dify.base_url, DIFY_API_KEYS="app-images,app-legacy-images")
    image_only_dify.reset()
    image = {"type": "image_url", "image_url": {"url": data_url("image/png", PNG)}}
    body = {"model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image,
                                                                      AUDIO_PART]}]}
    response = requests.post(gateway.base_url + "/chat/completions", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    error = assert_openai_error(response, 400, "unsupported_file_type", "messages[0].content[2]")
    assert error["message"] == ("'messages[0].content[2]' is a file of type audio, which this Dify app does not take "
                                "(its file upload allows: image).")
    assert records(image_only_dify, "/v1/files/upload") == [] and records(image_only_dify, "/v1/chat-messages") == []
    # Images still go through.
    body["messages"][0]["content"].pop()
    response = requests.post(gateway.base_url + "/chat/completions", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert response.status_code == 200
    [call] = records(image_only_dify, "/v1/chat-messages")
    assert [file["type"] for file in call["json"]["files"]] == ["image"]


def test_the_emulator_refuses_a_file_type_the_app_does_not_take_as_dify_does(image_only_dify):
    headers = {"Authorization": "Bearer app-images"}
    upload = requests.post(image_only_dify.base_url + "/files/upload", headers=headers, timeout=10,
                           data={"user": "u"}, files={"file": ("a.wav", b"RIFF....WAVE", "audio/wav")}).json()
    response = requests.post(image_only_dify.base_url + "/chat-messages", headers=headers, timeout=10, json={
        "query": "x", "inputs": {}, "user": "u", "response_mode": "blocking",
        "files": [{"type": "audio", "transfer_method": "local_file", "upload_file_id": upload["id"]}]})
    assert response.status_code == 400
    assert response.json() == {"code": "invalid_param", "message": "File validation failed for file: a.wav",
                               "status": 400}
