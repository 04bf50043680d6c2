"""Validation of legacy /v1/completions requests (docs/clients.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import invalid_request
from core.request.chat_request import RequestLimits, choice_count, require_model, stop_sequences


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str]
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    user: str | None
    inputs: dict[str, Any]
    stop: tuple[str, ...]

    @property
    def choice_prompts(self) -> list[str]:
        """The prompt of each choice: every prompt `n` times, so choice `i*n+j` is prompt `i`'s."""
        return [prompt for prompt in self.prompts for _ in range(self.n)]


def _prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(item, str) for item in prompts):
        raise invalid_request("'prompt' must be a string or a non-empty array of strings (token arrays are not "
                              "supported).", param="prompt", code="invalid_value")
    if not all(item.strip() for item in prompts):
        raise invalid_request("'prompt' must not be empty.", param="prompt", code="invalid_value")
    return prompts


def parse_completion_request(body: Any, model: str | None, limits: RequestLimits) -> CompletionRequest:
    model = require_model(body, model)
    prompts = _prompts(body)
    if sum(map(len, prompts)) > limits.max_prompt_chars:
        raise invalid_request(f"'prompt' holds more than {limits.max_prompt_chars} characters (MAX_PROMPT_CHARS).",
                              param="prompt", code="context_length_exceeded")
    # What Dify cannot do is refused clearly rather than silently ignored.
    if body.get("suffix"):
        raise invalid_request("'suffix' is not supported: Dify apps only append.", param="suffix",
                              code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise invalid_request("'best_of' is not supported.", param="best_of", code="unsupported_parameter")
    if body.get("logprobs"):
        raise invalid_request("'logprobs' is not supported: Dify does not report them.", param="logprobs",
                              code="unsupported_parameter")
    n = choice_count(body, limits.max_choices)
    if len(prompts) * n > limits.max_choices:
        raise invalid_request(f"len(prompt) * n must be at most {limits.max_choices}.", param="n",
                              code="invalid_value")
    stream = body.get("stream") is True
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    user = body.get("user") if isinstance(body.get("user"), str) and body["user"].strip() else None
    inputs = body.get("inputs") or {}
    if not isinstance(inputs, dict):
        raise invalid_request("'inputs' must be an object of Dify app inputs.", param="inputs", code="invalid_type")
    return CompletionRequest(model=model, prompts=prompts, n=n, stream=stream,
                             include_usage=stream and options.get("include_usage") is True,
                             echo=body.get("echo") is True, user=user, inputs=inputs, stop=stop_sequences(body))
