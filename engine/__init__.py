"""The engine: one parsed OpenAI request -> the Dify runs that answer it -> an `Answer`.

Every OpenAI surface (chat completions, text completions) goes through it; a blueprint only
parses HTTP, calls `start_chat` (chat.py) or `start_text` (text.py) and renders the `Answer`
(answer.py) they hand back. gateway.py holds the per-worker objects and starts relays;
chat.py plans a chat request's runs (memory mode, files, tools, stages, pacer), text.py a
text completion's.
docs/architecture.md follows one request through it.
"""
