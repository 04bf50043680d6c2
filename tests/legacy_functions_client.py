"""Runs inside the legacy openai==0.28 virtualenv: `functions` + `function_call`; prints one JSON object.

Usage: python legacy_functions_client.py BASE_URL KEY ANSWER_DIRECTIVE
"""

import json
import sys

import openai

openai.api_base, openai.api_key = sys.argv[1], sys.argv[2]
directive = sys.argv[3]
functions = [{
    "name": "get_weather",
    "description": "Weather forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]},
}]
messages = [{"role": "user", "content": "Weather in Paris?\n" + directive}]
results = {}

completion = openai.ChatCompletion.create(model="demo-chat", messages=messages, functions=functions)
choice = completion["choices"][0]
results["finish_reason"] = choice["finish_reason"]
results["content"] = choice["message"].get("content")
results["function_call"] = choice["message"]["function_call"].to_dict_recursive()

deltas, finish_reasons = [], []
for chunk in openai.ChatCompletion.create(model="demo-chat", messages=messages, functions=functions,
                                          function_call="auto", stream=True):
    delta = chunk["choices"][0]["delta"]
    if "function_call" in delta:
        deltas.append(delta["function_call"].to_dict_recursive())
    finish_reasons.append(chunk["choices"][0]["finish_reason"])
results["stream_deltas"] = deltas
results["stream_finish_reasons"] = finish_reasons

try:
    openai.ChatCompletion.create(model="demo-chat", messages=messages, functions=functions,
                                 function_call={"name": "get_time"})
except openai.error.InvalidRequestError as error:
    results["bad_function_call"] = [error.http_status, error.param]

print(json.dumps(results))
