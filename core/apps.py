"""A Dify app as the gateway serves it: one model, with its mode, input form and model id.

Model ids: the app name with whitespace and `/` replaced by `-` (clients put the id in URL
paths); when two apps get the same id, the later key in DIFY_API_KEYS gets `-2`, `-3`, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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
        """Dify `inputs`: the form's defaults, overridden by the request's `inputs`, plus the
        user's text in `text_variable()` (completion and workflow apps). Dify checks required
        inputs on every call; missing ones are refused here, before Dify is called."""
        inputs = {config["variable"]: config["default"] for _, config in self.input_form()
                  if config.get("default") not in (None, "")}
        inputs.update(given)
        if text is not None and not self.has_conversations:
            inputs.setdefault(self.text_variable(), text)
        missing = [config["variable"] for _, config in self.input_form()
                   if config.get("required") and inputs.get(config["variable"]) in (None, "")]
        if missing:
            raise invalid_request(f"The Dify app `{self.name}` requires the inputs: {', '.join(missing)}. "
                                  "Pass them in the request body field `inputs`.", param="inputs",
                                  code="missing_required_inputs")
        return inputs


def model_id_for(name: str) -> str:
    return re.sub(r"[\s/]+", "-", name.strip()) or "dify-app"
