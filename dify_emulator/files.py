"""POST /v1/files/upload (docs/dify.md 8)."""

from __future__ import annotations

import time
import uuid

from flask import Response, request

from .apps import App
from .conversations import DEFAULT_USER
from .errors import DifyError, invalid_param, json_response
from .store import State, UploadedFile

_IMAGE = {"jpg", "jpeg", "png", "gif", "webp", "svg"}
_VIDEO = {"mp4", "mov", "mpeg", "webm"}
_AUDIO = {"mp3", "m4a", "wav", "webm", "amr", "mpga"}
_MB = 1024 * 1024


def size_limit(app: App, extension: str) -> int:
    """Upload limit in bytes for the extension's type class (images, video, audio, other)."""
    limits = app.system_parameters
    if extension in _IMAGE:
        return int(limits["image_file_size_limit"] * _MB)
    if extension in _VIDEO:
        return int(limits["video_file_size_limit"] * _MB)
    if extension in _AUDIO:
        return int(limits["audio_file_size_limit"] * _MB)
    return int(limits["file_size_limit"] * _MB)


def upload_file(state: State, app: App) -> Response:
    """Checks in Dify's order, then 201 with the upload record.

    More than one file part (under any field names) is `too_many_files`.
    """
    if "file" not in request.files:
        raise DifyError(400, "no_file_uploaded", "Please upload your file.")
    if sum(len(request.files.getlist(name)) for name in request.files) > 1:
        raise DifyError(400, "too_many_files", "Only one file is allowed.")
    part = request.files["file"]
    if not part.mimetype:
        raise DifyError(415, "unsupported_file_type", "File type not allowed.")
    filename = part.filename or ""
    if not filename:
        raise DifyError(400, "filename_not_exists_error", "The specified filename does not exist.")
    if "/" in filename or "\\" in filename:
        raise invalid_param("Filename contains invalid characters")
    content = part.read()
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    limit = size_limit(app, extension)
    if len(content) > limit:
        message = "" if app.profile == "modern" else f"File size exceeded. {len(content)} > {limit}"
        raise DifyError(413, "file_too_large", message)
    user = request.form.get("user") or DEFAULT_USER
    upload = UploadedFile(
        id=str(uuid.uuid4()),
        app_key=app.key,
        user=user,
        name=filename,
        size=len(content),
        extension=extension,
        mime_type=part.mimetype,
        created_by=state.end_user_id(app.key, user),
        created_at=int(time.time()),
    )
    state.add_file(upload)
    body = {
        "id": upload.id,
        "name": upload.name,
        "size": upload.size,
        "extension": upload.extension,
        "mime_type": upload.mime_type,
        "created_by": upload.created_by,
        "created_at": upload.created_at,
    }
    if app.profile != "legacy":
        source = f"{request.host_url}files/{upload.id}/file-preview?timestamp={upload.created_at}&nonce=emulator"
        body.update(preview_url=None, source_url=source)
    if app.profile == "modern":
        body = {
            "id": upload.id,
            "reference": None,
            **body,
            "original_url": None,
            "user_id": None,
            "tenant_id": app.id,
            "conversation_id": None,
            "file_key": None,
        }
    return json_response(body, 201)
