"""Runs inside the legacy openai==0.28 virtualenv: two three-turn conversations sent the
NextChat way (the whole history each time, the assistant turns exactly as received), one
non-streaming and one streaming. Prints one JSON object of results.

Usage: python legacy_memory_client.py BASE_URL KEY
"""

import json
import sys

import openai

openai.api_base, openai.api_key = sys.argv[1], sys.argv[2]


def ask(messages, stream):
    if not stream:
        completion = openai.ChatCompletion.create(model="demo-chat", messages=messages)
        return completion["choices"][0]["message"]["content"], None
    pieces = []
    for chunk in openai.ChatCompletion.create(model="demo-chat", messages=messages, stream=True):
        delta = chunk["choices"][0]["delta"]
        if delta.get("content"):
            pieces.append(delta["content"])
    return "".join(pieces), pieces


results = {}
for stream in (False, True):
    messages = [{"role": "system", "content": "Be brief."}]
    replies, first_pieces = [], None
    for question in ("legacy one", "legacy two", "legacy three"):
        messages.append({"role": "user", "content": question})
        reply, pieces = ask(messages, stream)
        first_pieces = first_pieces or pieces
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply})
    results["stream" if stream else "blocking"] = {"replies": replies, "first_pieces": first_pieces}

print(json.dumps(results))
