"""OpenDify settings: read once from the environment (and `.env`), validated at start.

Every variable is listed in `.env.example` and in the README. A bad value raises
`ConfigError` whose message is one line naming the variable, so gunicorn's worker exits with
that line instead of a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    dify_api_base: str
    dify_api_keys: tuple[str, ...]
    valid_api_keys: tuple[str, ...] = ()
    allow_open_access: bool = False
    conversation_memory_mode: int = 2
    timeout: float = 30.0
    server_host: str = "127.0.0.1"
    server_port: int = 8000
    smooth_output: bool = True
    smooth_max_lag: float = 0.05
    app_info_ttl: float = 300.0
    first_event_wait: float = 10.0
    keepalive_interval: float = 10.0
    cors_allow_origins: tuple[str, ...] = ("*",)
    pool_size: int = 1000
    log_level: str = "INFO"
    max_choices: int = 8
    max_concurrent_requests: int = 900
    max_request_bytes: int = 32 * 1024 * 1024
    max_messages: int = 1000
    max_prompt_chars: int = 1_000_000
    stream_deadline: float = 1200.0
    max_upload_bytes: int = 10 * 1024 * 1024
    think_tags: str = "reasoning"
    agent_thoughts: str = "reasoning"
    workflow_progress: bool = False
    model_aliases: tuple[tuple[str, str], ...] = ()
    default_model: str | None = None

    @property
    def open_access(self) -> bool:
        return not self.valid_api_keys


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be one of on/off, true/false, 1/0 (got {raw!r})")


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number (got {raw!r})") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g} (got {raw!r})")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number (got {raw!r})") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum} (got {raw!r})")
    return value


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
    return value


def _aliases(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    aliases = []
    for item in _csv(env, "MODEL_ALIASES"):
        alias, _, target = item.partition("=")
        if not alias.strip() or not target.strip():
            raise ConfigError(f"MODEL_ALIASES items must look like alias=model (got {item!r})")
        aliases.append((alias.strip(), target.strip()))
    return tuple(aliases)


def _api_base(env: Mapping[str, str]) -> str:
    raw = env.get("DIFY_API_BASE", "").strip()
    if not raw:
        raise ConfigError("DIFY_API_BASE is required, e.g. https://api.dify.ai/v1")
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"DIFY_API_BASE must start with http:// or https:// (got {raw!r})")
    return raw.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_file_path() -> str:
    """OPENDIFY_ENV_FILE, else the `.env` beside this file (not the working directory's)."""
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env")
    return os.environ.get("OPENDIFY_ENV_FILE") or default


def load_env_file() -> None:
    """Merge the .env file under the process environment (the environment wins)."""
    from dotenv import load_dotenv

    load_dotenv(env_file_path(), override=False)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the Settings from `env` (default: `.env` merged under the process environment)."""
    if env is None:
        load_env_file()
        env = os.environ

    dify_api_keys = _csv(env, "DIFY_API_KEYS")
    if not dify_api_keys:
        raise ConfigError("DIFY_API_KEYS is required: a comma list of Dify app keys (app-...)")

    memory_mode = _integer(env, "CONVERSATION_MEMORY_MODE", 2, minimum=0)
    if memory_mode > 2:
        raise ConfigError(f"CONVERSATION_MEMORY_MODE must be 0, 1 or 2 (got {memory_mode})")

    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL (got {log_level!r})")

    settings = Settings(
        dify_api_base=_api_base(env),
        dify_api_keys=dify_api_keys,
        valid_api_keys=_csv(env, "VALID_API_KEYS"),
        allow_open_access=_flag(env, "ALLOW_OPEN_ACCESS", False),
        conversation_memory_mode=memory_mode,
        timeout=_number(env, "TIMEOUT", 30.0, minimum=1),
        server_host=env.get("SERVER_HOST", "127.0.0.1").strip() or "127.0.0.1",
        server_port=_integer(env, "SERVER_PORT", 8000, minimum=0),
        smooth_output=_flag(env, "SMOOTH_OUTPUT", True),
        smooth_max_lag=_number(env, "SMOOTH_MAX_LAG_MS", 50, minimum=0) / 1000,
        app_info_ttl=_number(env, "APP_INFO_TTL", 300.0, minimum=1),
        first_event_wait=_number(env, "FIRST_EVENT_WAIT", 10.0, minimum=0),
        keepalive_interval=_number(env, "KEEPALIVE_INTERVAL", 10.0, minimum=0.05),
        cors_allow_origins=_csv(env, "CORS_ALLOW_ORIGINS") or ("*",),
        pool_size=_integer(env, "WORKER_CONNECTIONS", 1000, minimum=1),
        log_level=log_level,
        max_choices=_integer(env, "MAX_CHOICES", 8, minimum=1),
        # Below WORKER_CONNECTIONS, so that refusals and health checks still get through.
        max_concurrent_requests=_integer(env, "MAX_CONCURRENT_REQUESTS",
                                         max(1, _integer(env, "WORKER_CONNECTIONS", 1000, minimum=1) * 9 // 10),
                                         minimum=1),
        max_request_bytes=int(_number(env, "MAX_REQUEST_MB", 32, minimum=0.001) * 1024 * 1024),
        max_messages=_integer(env, "MAX_MESSAGES", 1000, minimum=1),
        max_prompt_chars=_integer(env, "MAX_PROMPT_CHARS", 1_000_000, minimum=1),
        stream_deadline=_number(env, "STREAM_DEADLINE", 1200.0, minimum=1),
        max_upload_bytes=int(_number(env, "MAX_UPLOAD_MB", 10, minimum=0.001) * 1024 * 1024),
        think_tags=_choice(env, "THINK_TAGS", "reasoning", ("reasoning", "content")),
        agent_thoughts=_choice(env, "AGENT_THOUGHTS", "reasoning", ("reasoning", "tool_calls", "hidden")),
        workflow_progress=_flag(env, "WORKFLOW_PROGRESS", False),
        model_aliases=_aliases(env),
        default_model=env.get("DEFAULT_MODEL", "").strip() or None,
    )
    if settings.open_access and not settings.allow_open_access and not is_loopback(settings.server_host):
        raise ConfigError(
            f"VALID_API_KEYS is empty while SERVER_HOST={settings.server_host} is not a loopback "
            "address: set VALID_API_KEYS, or ALLOW_OPEN_ACCESS=true to serve without keys"
        )
    return settings
