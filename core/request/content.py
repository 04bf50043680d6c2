"""OpenAI message content as plain text."""

from __future__ import annotations

import json
from typing import Any


def content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list joined by newlines.

    Parts that are not text (images, files, audio, unknown types) add nothing; other values
    become JSON, never a Python repr.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [_part_text(part) for part in content]
        return "\n".join(text for text in texts if text)
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    return ""
