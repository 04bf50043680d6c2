"""Runs inside the legacy openai==0.28 virtualenv; prints one JSON object of results.

Usage: python legacy_client.py BASE_URL KEY
"""

import json
import sys

import openai

openai.api_base, openai.api_key = sys.argv[1], sys.argv[2]
results = {}

completion = openai.ChatCompletion.create(model="demo-chat", messages=[{"role": "user", "content": "legacy hi"}])
results["content"] = completion["choices"][0]["message"]["content"]
results["finish_reason"] = completion["choices"][0]["finish_reason"]
results["usage"] = completion["usage"]["total_tokens"]

pieces = []
for chunk in openai.ChatCompletion.create(model="demo-chat", stream=True,
                                          messages=[{"role": "user", "content": "legacy stream"}]):
    pieces.append(chunk["choices"][0]["delta"].get("content") or "")
results["streamed"] = "".join(pieces)

results["models"] = [model["id"] for model in openai.Model.list()["data"]]

try:
    openai.ChatCompletion.create(model="nope", messages=[{"role": "user", "content": "x"}])
except openai.error.InvalidRequestError as error:
    results["not_found"] = [error.code, error.param, error.http_status]

try:
    openai.ChatCompletion.create(model="demo-chat", messages=[{"role": "user", "content": "x"}], api_key="bad")
except openai.error.AuthenticationError as error:
    results["auth"] = error.http_status

try:
    for _ in openai.ChatCompletion.create(
            model="demo-chat", stream=True,
            messages=[{"role": "user", "content": 'a b c\n@emulator {"error_after": 2}'}]):
        pass
except openai.error.APIError as error:
    results["stream_error"] = str(error)

engine_reply = openai.ChatCompletion.create(engine="demo-chat", messages=[{"role": "user", "content": "by engine"}])
results["engine"] = engine_reply["choices"][0]["message"]["content"]

text = openai.Completion.create(model="demo-chat", prompt="complete me")
results["completion"] = [text["object"], text["choices"][0]["text"]]
streamed = [chunk["choices"][0]["text"] for chunk in openai.Completion.create(engine="demo-chat", prompt="stream me",
                                                                             stream=True)]
results["completion_stream"] = "".join(streamed)

print(json.dumps(results))
