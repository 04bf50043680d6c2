"""OpenAI content parts that carry files -> Dify file references.

`image_url` parts with an http(s) URL are passed to Dify as `remote_url` (the gateway never
fetches a user-supplied URL); `data:` URLs, `file` parts (base64 `file_data`) and
`input_audio` parts are uploaded to Dify's `/files/upload` under the same Dify `user` as the
chat call (Dify checks the owner) and referenced as `local_file`. The Dify file `type`
follows the MIME type (docs/dify.md 8).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import OpenAIError, invalid_request

FILE_PART_TYPES = ("image_url", "file", "input_audio")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.IGNORECASE)
_DOCUMENT_MIMES = {"application/pdf", "application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint",
                   "application/epub+zip", "application/xml", "application/json", "message/rfc822"}
_AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg", "m4a": "audio/mp4", "webm": "audio/webm",
                  "ogg": "audio/ogg", "flac": "audio/flac"}


@dataclass(frozen=True)
class Upload:
    filename: str
    mime_type: str
    data: bytes


# Uploads one file to Dify (for the right app and user) and returns its upload_file_id.
Uploader = Callable[[Upload], str]


def dify_file_type(mime_type: str) -> str:
    major = mime_type.split("/", 1)[0]
    if major in ("image", "audio", "video"):
        return major
    if major == "text" or mime_type in _DOCUMENT_MIMES or "officedocument" in mime_type:
        return "document"
    return "custom"


def dify_files(messages: list[dict[str, Any]], first_index: int, upload: Uploader, max_bytes: int,
               allowed_types: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Dify `files` for the file parts of the user messages from `first_index` on.

    Every part is decoded and checked first, so a bad one is refused before anything is
    uploaded; `allowed_types` (the app's `file_upload` setting) refuses a type Dify would
    refuse too ("File validation failed"), naming the part."""
    found: list[tuple[str, dict[str, Any] | Upload]] = []
    for index in range(first_index, len(messages)):
        message = messages[index]
        content = message.get("content")
        if message["role"] != "user" or not isinstance(content, list):
            continue
        for part_index, part in enumerate(content):
            if part.get("type") in FILE_PART_TYPES:
                param = f"messages[{index}].content[{part_index}]"
                found.append((param, _decoded_file(part, param, max_bytes)))
    for param, file in found:
        file_type = file["type"] if isinstance(file, dict) else dify_file_type(file.mime_type)
        if allowed_types is not None and file_type not in allowed_types and file_type != "custom":
            raise invalid_request(f"'{param}' is a file of type {file_type}, which this Dify app does not take (its "
                                  f"file upload allows: {', '.join(sorted(allowed_types))}).", param=param,
                                  code="unsupported_file_type")
    return [file if isinstance(file, dict) else {"type": dify_file_type(file.mime_type),
                                                 "transfer_method": "local_file", "upload_file_id": upload(file)}
            for _, file in found]


def _decoded_file(part: dict[str, Any], param: str, max_bytes: int) -> dict[str, Any] | Upload:
    """A remote image as its Dify reference, any other file part as the Upload it needs."""
    kind = part["type"]
    body = part.get(kind)
    if not isinstance(body, dict):
        raise invalid_request(f"'{param}.{kind}' must be an object.", param=param, code="invalid_type")
    if kind == "image_url":
        url = body.get("url")
        if not isinstance(url, str) or not url.strip():
            raise invalid_request(f"'{param}.image_url.url' must be a URL.", param=param, code="invalid_value")
        if url.startswith(("http://", "https://")):
            return {"type": "image", "transfer_method": "remote_url", "url": url}
        mime_type, data = _decode_data_url(url, param, max_bytes)
        if not mime_type.startswith("image/"):
            raise invalid_request(f"'{param}' is not an image ({mime_type}).", param=param, code="invalid_image")
        return Upload(f"image{_extension(mime_type)}", mime_type, data)
    if kind == "file":
        return _file_upload(body, param, max_bytes)
    return _audio_upload(body, param, max_bytes)


def _file_upload(body: dict[str, Any], param: str, max_bytes: int) -> Upload:
    if body.get("file_id"):
        raise invalid_request(f"'{param}.file.file_id' is not supported: send the file inline as file_data.",
                              param=param, code="unsupported_parameter")
    file_data = body.get("file_data")
    if not isinstance(file_data, str) or not file_data:
        raise invalid_request(f"'{param}.file.file_data' must hold the file, base64-encoded.", param=param,
                              code="invalid_value")
    filename = body.get("filename") if isinstance(body.get("filename"), str) else ""
    # No path separators (Dify refuses them), and no lone surrogates (no UTF-8 form).
    filename = filename.encode("utf-8", "replace").decode().replace("/", "_").replace("\\", "_").strip() or "file"
    if file_data.startswith("data:"):
        mime_type, data = _decode_data_url(file_data, param, max_bytes)
    else:
        data = _decode_base64(file_data, param, max_bytes)
        mime_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if "." not in filename:
        filename += _extension(mime_type)
    return Upload(filename, mime_type, data)


def _audio_upload(body: dict[str, Any], param: str, max_bytes: int) -> Upload:
    audio_format = str(body.get("format") or "").lower()
    mime_type = _AUDIO_FORMATS.get(audio_format)
    if mime_type is None:
        raise invalid_request(f"'{param}.input_audio.format' must be one of {', '.join(_AUDIO_FORMATS)}.",
                              param=param, code="invalid_value")
    data = _decode_base64(body.get("data"), param, max_bytes)
    return Upload(f"audio.{audio_format}", mime_type, data)


def _decode_data_url(url: str, param: str, max_bytes: int) -> tuple[str, bytes]:
    match = _DATA_URL.match(url)
    if not match or not match.group("b64"):
        raise invalid_request(f"'{param}' must be an http(s) URL or a base64 data: URL.", param=param,
                              code="invalid_value")
    mime_type = (match.group("mime") or "application/octet-stream").lower()
    return mime_type, _decode_base64(url[match.end():], param, max_bytes)


def _decode_base64(text: Any, param: str, max_bytes: int) -> bytes:
    if not isinstance(text, str) or not text:
        raise invalid_request(f"'{param}' must hold base64 data.", param=param, code="invalid_value")
    if len(text) * 3 // 4 > max_bytes + 3:  # refuse before decoding a huge body
        raise _too_large(param, max_bytes)
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request(f"'{param}' is not valid base64.", param=param, code="invalid_base64") from None
    if len(data) > max_bytes:
        raise _too_large(param, max_bytes)
    return data


def _too_large(param: str, max_bytes: int) -> OpenAIError:
    return OpenAIError(413, f"'{param}' is larger than the {max_bytes // (1024 * 1024)} MB upload limit "
                            "(MAX_UPLOAD_MB).", param=param, code="file_too_large")


def _extension(mime_type: str) -> str:
    return {"image/jpeg": ".jpg", "audio/mpeg": ".mp3"}.get(mime_type) or mimetypes.guess_extension(mime_type) or ""
