"""A Dify app as the gateway serves it (one model), and the index of model ids.

Model ids are the Dify app names exactly, spaces kept, as the original OpenDify listed them
(MODEL_ID_STYLE=exact), or slugs with whitespace and `/` replaced by `-` (MODEL_ID_STYLE=slug,
for front ends that cannot hold spaces; what OpenDify listed before). When two apps have the
same name, the later key in DIFY_API_KEYS gets a suffix: " (2)", " (3)", ... on exact ids,
"-2", "-3", ... on slugs, skipping a number whose id another app has as its name, so every
listed id is one app's. Whatever the style, a request may name an app by its exact id, that
id URL-encoded (`%20`, or `+` as openai 0.28's `Model.retrieve` sends it), or its slug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, unquote_plus

from core.errors import invalid_request

CHAT_MODES = {"chat", "agent-chat", "advanced-chat", "agent"}
_TEXT_FIELDS = ("paragraph", "text-input")


@dataclass(frozen=True)
class DifyApp:
    key: str = field(repr=False)
    name: str
    mode: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    created: int = 0

    @property
    def has_conversations(self) -> bool:
        return self.mode in CHAT_MODES

    @property
    def allowed_file_types(self) -> frozenset[str] | None:
        """The Dify file types (image, document, audio, video) a call may carry, from the app's
        `file_upload` settings (docs/dify.md 9.2); None when any may, or upload is off (Dify
        then drops files without a word). An app with only the legacy image setting takes images."""
        upload = self.parameters.get("file_upload")
        if not isinstance(upload, dict):
            return None
        if upload.get("enabled"):
            allowed = upload.get("allowed_file_types")
            return frozenset(allowed) if isinstance(allowed, list) and allowed else None
        image = upload.get("image")
        return frozenset({"image"}) if isinstance(image, dict) and image.get("enabled") else None

    def input_form(self) -> list[tuple[str, dict[str, Any]]]:
        """`/parameters` user_input_form as (field type, field config) pairs."""
        form = []
        for entry in self.parameters.get("user_input_form") or []:
            if isinstance(entry, dict) and len(entry) == 1:
                field_type, config = next(iter(entry.items()))
                if isinstance(config, dict) and config.get("variable"):
                    form.append((field_type, config))
        return form

    def text_variable(self) -> str:
        """The input that receives the user's text in completion and workflow apps: `query`
        when the form has it, else the first required text field, else the first text field."""
        form = self.input_form()
        names = [config["variable"] for _, config in form]
        if "query" in names:
            return "query"
        text_fields = [config for field_type, config in form if field_type in _TEXT_FIELDS]
        required = [config for config in text_fields if config.get("required")]
        return (required or text_fields or [{"variable": "query"}])[0]["variable"]

    def inputs_for(self, given: dict[str, Any], text: str | None) -> dict[str, Any]:
        """Dify `inputs`: the form's defaults, the user's text in `text_variable()` (completion
        and workflow apps; over its default, but not over the request's own value for it), then
        the request's `inputs`. Dify checks required inputs on every call; missing ones are
        refused here, before Dify is called."""
        inputs = {config["variable"]: config["default"] for _, config in self.input_form()
                  if config.get("default") not in (None, "")}
        if text is not None and not self.has_conversations and (variable := self.text_variable()) not in given:
            inputs[variable] = text
        inputs.update(given)
        missing = [config["variable"] for _, config in self.input_form()
                   if config.get("required") and inputs.get(config["variable"]) in (None, "")]
        if missing:
            raise invalid_request(f"The Dify app `{self.name}` requires the inputs: {', '.join(missing)}. "
                                  "Pass them in the request body field `inputs`.", param="inputs",
                                  code="missing_required_inputs")
        return inputs


def slug(name: str) -> str:
    return re.sub(r"[\s/]+", "-", name.strip()) or "dify-app"


def _numbered(names: list[str], suffix: str) -> list[str]:
    """The names, each repeat after the first with `suffix` holding the lowest number from 2
    on that gives an id no app is named and no other app was given: apps "Bot", "Bot" and
    "Bot (2)" are "Bot", "Bot (3)" and "Bot (2)"."""
    taken = set(names)
    seen: set[str] = set()
    ids = []
    for name in names:
        model_id, number = name, 1
        while name in seen and model_id in taken:
            number += 1
            model_id = name + suffix.format(number)
        seen.add(name)
        taken.add(model_id)
        ids.append(model_id)
    return ids


class ModelIndex:
    """The served apps by listed model id, and the names a request may use for each."""

    def __init__(self, apps: list[DifyApp], style: str = "exact") -> None:
        """`apps` in DIFY_API_KEYS order; `style` is MODEL_ID_STYLE (exact or slug)."""
        exact_ids = _numbered([app.name for app in apps], " ({})")
        slug_ids = _numbered([slug(app.name) for app in apps], "-{}")
        self.listed = dict(zip(exact_ids if style == "exact" else slug_ids, apps, strict=True))
        self._by_exact_id = dict(zip(exact_ids, apps, strict=True))
        self._by_slug = {}
        for slug_id, app in zip(slug_ids, apps, strict=True):
            self._by_slug.setdefault(slug_id, app)
        self._ids = {app.key: model_id for model_id, app in self.listed.items()}

    def __bool__(self) -> bool:
        return bool(self.listed)

    def find(self, name: str) -> DifyApp | None:
        """The app `name` means: an exact id (as given or URL-decoded), else a slug."""
        for candidate in (name, unquote(name), unquote_plus(name)):
            app = self._by_exact_id.get(candidate)
            if app is not None:
                return app
        return self._by_slug.get(name) or self._by_slug.get(unquote_plus(name))

    def id_of(self, app: DifyApp) -> str:
        """The model id `app` is listed under."""
        return self._ids[app.key]
