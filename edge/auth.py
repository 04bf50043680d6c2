"""Client access keys (VALID_API_KEYS) and the Dify `user` derived from them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer`, or the `api-key` / `X-API-Key` headers
    (Azure-style clients and some SDKs)."""
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for name in ("api-key", "X-API-Key"):
        value = headers.get(name, "").strip()
        if value:
            return value
    return None


def key_is_valid(key: str | None, valid_keys: tuple[str, ...]) -> bool:
    """Constant-time check against every configured key (no early exit on a match)."""
    if key is None:
        return False
    presented = key.encode()
    matched = False
    for valid in valid_keys:
        matched |= hmac.compare_digest(presented, valid.encode())
    return matched


def dify_user_for(openai_user: str | None, client_key: str | None, header_user: str | None = None) -> str:
    """The Dify `user`: the value of the trusted USER_HEADER when the request has it (a front end
    that shares one key among its users names them there: Open WebUI's X-OpenWebUI-User-Id),
    else the OpenAI `user` field, else a stable digest of the client's key.

    Dify scopes conversations, uploads and stop calls to it, so it must be the same on every
    request of a user; the key itself never leaves the gateway. It goes to Dify in JSON, in
    query strings and in multipart forms, so it is made valid UTF-8: a lone surrogate (JSON
    can carry one, `"\\ud800"`) becomes `?`.
    """
    for name in (header_user, openai_user):
        if name and name.strip():
            return name.strip()[:255].encode("utf-8", "replace").decode()
    if client_key:
        return "opendify-" + hashlib.sha256(client_key.encode()).hexdigest()[:24]
    return "opendify-anonymous"
