"""The one pooled HTTP session to Dify, and the calls the gateway makes with it.

Every failure is turned into an `OpenAIError` here, so callers never see `requests`
exceptions, and no message ever carries a Dify key (only the route and what Dify said).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from core.errors import OpenAIError, from_dify_error, upstream_failure, upstream_timeout, upstream_unreachable
from core.request.files import Upload

log = logging.getLogger(__name__)

# Seconds a stop call may take; it runs in the background and must never pile up.
STOP_TIMEOUT = 5.0


class DifyClient:
    def __init__(self, base_url: str, timeout: float, pool_size: int) -> None:
        self.base_url = base_url.rstrip("/")
        # Dify's file URLs may be relative to its origin (when FILES_URL is not configured).
        parts = urlsplit(self.base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.timeout = timeout
        self.session = requests.Session()
        # Retry only connection failures: nothing reached Dify yet, so a retry cannot run
        # an app twice. Reads and statuses are never retried.
        retry = Retry(total=2, connect=2, read=False, status=0, other=0, redirect=0, backoff_factor=0.1,
                      allowed_methods=None, raise_on_status=False)
        self._adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.session.mount("http://", self._adapter)
        self.session.mount("https://", self._adapter)
        # Proxy and CA-bundle settings from the environment are read once here, not on every
        # call (requests would rescan the environment and ~/.netrc each time).
        options = self.session.merge_environment_settings(self.base_url, {}, None, None, None)
        self._send_options = {name: options[name] for name in ("verify", "cert", "proxies")}
        if parts.scheme != "https":  # a CA-bundle path would be looked up on disk on every call
            self._send_options["verify"] = True

    def _request(self, method: str, app_key: str, path: str, *, payload: Any = None, stream: bool = False,
                 timeout: float | None = None, files: dict[str, Any] | None = None,
                 form: dict[str, str] | None = None) -> requests.Response:
        # Compressed SSE would be buffered by the decompressor.
        headers = {"Authorization": f"Bearer {app_key}", "Accept-Encoding": "identity"}
        if files is None:
            headers["Content-Type"] = "application/json"
            # "replace": a lone surrogate (valid in a JSON escape) has no UTF-8 form.
            body: Any = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8", "replace")
        else:
            body = form  # multipart: requests writes the Content-Type with its boundary
        wait = timeout or self.timeout
        # The request goes straight to the session's pooled adapter: the session's cookie,
        # redirect and hook handling cost more CPU than the rest of the call, and Dify needs
        # none of them.
        prepared = requests.PreparedRequest()
        prepared.prepare(method=method, url=self.base_url + path, headers=headers, data=body, files=files)
        try:
            response = self._adapter.send(prepared, stream=stream, timeout=(wait, wait), **self._send_options)
        except requests.exceptions.Timeout:
            raise upstream_timeout(f"{method} {path}") from None
        except requests.exceptions.ConnectionError as exc:
            if _never_connected(exc):
                raise upstream_unreachable(f"{method} {path} failed ({type(exc).__name__})") from None
            # The request went out and the connection broke: Dify may have started the run, so
            # a retry could run it twice.
            raise upstream_failure(f"the connection to Dify broke before it answered {method} {path}", 502,
                               "upstream_disconnected", retry=False) from None
        except requests.exceptions.RequestException as exc:
            raise upstream_unreachable(f"{method} {path} failed ({type(exc).__name__})") from None
        if response.status_code >= 300:
            raise _error_from_response(response, method, path)
        if not stream:
            try:
                _ = response.content  # read to the end, so the connection goes back to the pool
            except requests.exceptions.RequestException as exc:
                response.close()
                raise _read_failure(exc, method, path) from None
        return response

    def get_json(self, app_key: str, path: str) -> dict[str, Any]:
        response = self._request("GET", app_key, path)
        try:
            data = response.json()
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deep to decode
            raise upstream_failure(f"Dify answered {path} with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise upstream_failure(f"Dify answered {path} with unexpected JSON")
        return data

    def open_stream(self, app_key: str, path: str, payload: dict[str, Any]) -> requests.Response:
        """POST a streaming call; returns once Dify sent its headers (status checked)."""
        response = self._request("POST", app_key, path, payload=payload, stream=True)
        content_type = response.headers.get("Content-Type", "")
        if "text/event-stream" not in content_type:
            response.close()
            kind = content_type or "no content type"
            raise upstream_failure(f"Dify answered {path} with {kind} instead of an event stream")
        return response

    def newest_message_ids(self, app_key: str, user: str, conversation_id: str, count: int) -> list[str]:
        """The ids of a conversation's newest `count` messages (at most 100), oldest first
        (GET /messages, docs/dify.md 10); a conversation Dify does not know is a 404."""
        query = urlencode({"conversation_id": conversation_id, "user": user, "limit": min(max(count, 1), 100)})
        page = self.get_json(app_key, f"/messages?{query}").get("data")
        if not isinstance(page, list):
            return []
        return [str(message.get("id")) for message in page if isinstance(message, dict)]

    def transcribe(self, app_key: str, user: str, audio: Upload) -> str:
        """POST /audio-to-text (multipart): the text Dify's speech-to-text model heard (docs/dify.md 16)."""
        return self._send_file(app_key, "/audio-to-text", user, audio, "text")

    def speak(self, app_key: str, user: str, text: str, voice: str | None) -> requests.Response:
        """POST /text-to-audio: Dify's speech, to be read as it arrives (docs/dify.md 16)."""
        payload: dict[str, Any] = {"text": text, "user": user, "streaming": True}
        if voice:
            payload["voice"] = voice
        return self._request("POST", app_key, "/text-to-audio", payload=payload, stream=True)

    def upload(self, app_key: str, user: str, upload: Upload) -> str:
        """POST /files/upload (multipart, with the chat's `user`, who will own the file): its id."""
        return self._send_file(app_key, "/files/upload", user, upload, "id")

    def _send_file(self, app_key: str, path: str, user: str, upload: Upload, field: str) -> str:
        """A multipart POST of one file for `user`, and the string `field` of Dify's JSON answer."""
        response = self._request("POST", app_key, path, form={"user": user},
                                 files={"file": (upload.filename, upload.data, upload.mime_type)})
        try:
            value = response.json().get(field)
        except (ValueError, AttributeError, RecursionError):
            value = None
        if not isinstance(value, str):
            raise upstream_failure(f"Dify answered {path} without {field!r}")
        return value

    def refusal_code(self, app_key: str, path: str, payload: dict[str, Any]) -> str | None:
        """Dify's error code for a call that is expected to be refused (None if accepted)."""
        try:
            self._request("POST", app_key, path, payload=payload).close()
        except OpenAIError as exc:
            if exc.status >= 500 and exc.code in ("upstream_unavailable", "upstream_timeout"):
                raise
            return exc.code
        return None

    def stop(self, app_key: str, path: str, user: str) -> None:
        """Ask Dify to stop a task; best effort (Dify answers success even for unknown tasks)."""
        try:
            self._request("POST", app_key, path, payload={"user": user}, timeout=STOP_TIMEOUT).close()
        except OpenAIError as exc:
            log.warning("stop call %s failed: %s", path, exc.message)


def _never_connected(error: requests.exceptions.ConnectionError) -> bool:
    """True when no connection was made (refused, DNS failure): nothing reached Dify."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return isinstance(reason, NewConnectionError | NameResolutionError)


def _read_failure(error: requests.exceptions.RequestException, method: str, path: str) -> OpenAIError:
    """Dify's answer broke off, or went silent for TIMEOUT, while its body was read (requests
    wraps urllib3's read timeout in a ConnectionError). The call reached Dify: no retry."""
    if isinstance(error, requests.exceptions.Timeout) or any(isinstance(arg, ReadTimeoutError) for arg in error.args):
        return upstream_timeout(f"{method} {path} (its body)")
    return upstream_failure(f"the connection to Dify broke while it answered {method} {path}", 502,
                            "upstream_disconnected", retry=False)


def _error_from_response(response: requests.Response, method: str, path: str) -> OpenAIError:
    status = response.status_code
    try:
        body = response.json()
    except (ValueError, RecursionError):  # not JSON (requests' JSONDecodeError is a ValueError too)
        body = None
    except requests.exceptions.RequestException as exc:
        return _read_failure(exc, method, path)
    finally:
        response.close()
    if body is None:
        if status == 404:
            return upstream_failure(
                f"Dify answered {path} with an HTML 404 page: check that DIFY_API_BASE ends with /v1",
                502, "upstream_misconfigured", retry=False)
        if 300 <= status < 400:
            return upstream_failure(f"Dify redirected {path} (HTTP {status}): check DIFY_API_BASE", 502,
                                "upstream_misconfigured", retry=False)
        return from_dify_error(status, {"message": f"HTTP {status} with a non-JSON body"},
                               response.headers.get("Retry-After"))
    return from_dify_error(status, body, response.headers.get("Retry-After"))
