"""OpenDify settings: one table, read once from the environment (and `.env`), validated at start.

`SETTINGS` is the single source of truth, as gunicorn's own settings table is: each entry
names its environment variable, the `Settings` attribute it fills, a small validator that
turns the text into a value, its default and what it means. The gateway (`create_app`) and
gunicorn (`gunicorn.conf.py`) both read their values through `load_settings`, so a value is
parsed and checked in one place. `.env.example` and the README list every entry (a test
keeps them in step).

A bad value raises `ConfigError` whose message is one line naming the variable; the entry
points print it and exit instead of showing a traceback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


class _Default:
    """What a validator returns for an empty value that means "use the default"."""


DEFAULT: Any = _Default()


# --- validators: the variable's text (stripped, possibly empty) -> its value --------------------
# Each raises ValueError with the rule the text broke; load_settings adds the variable's name.


def flag(text: str) -> bool:
    value = text.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of on/off, true/false, 1/0")


def number(minimum: float, maximum: float | None = None, *, scale: float = 1.0,
           whole: bool = False) -> Callable[[str], Any]:
    """A number (a whole one with `whole`) from `minimum` to `maximum`, times `scale`."""
    convert, kind = (int, "a whole number") if whole else (float, "a number")

    def parse(text: str) -> Any:
        if not text:
            return DEFAULT
        try:
            value = convert(text)
        except ValueError:
            raise ValueError(f"must be {kind}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum:g}")
        return value * scale if scale != 1.0 else value

    return parse


def whole(minimum: int, maximum: int | None = None) -> Callable[[str], Any]:
    return number(minimum, maximum, whole=True)


def megabytes(text: str) -> Any:
    """A size in MB (at least 1 KB), as bytes."""
    value = number(0.001)(text)
    return value if value is DEFAULT else int(value * 1024 * 1024)


def choice(*allowed: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = text.lower()
        if not value:
            return DEFAULT
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def text_or_default(text: str) -> Any:
    return text or DEFAULT


def text_or_none(text: str) -> str | None:
    return text or None


def comma_list(text: str) -> Any:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    return items or DEFAULT


def url(text: str) -> Any:
    if not text:
        return DEFAULT
    if not text.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return text.rstrip("/")


def pairs(left: str, right: str, allowed: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A comma list of `left=right` items (right one of `allowed`, when given)."""

    def parse(text: str) -> tuple[tuple[str, str], ...]:
        items = []
        for item in comma_list(text) if text else ():
            key, _, value = (part.strip() for part in item.partition("="))
            if not key or not value:
                raise ValueError(f"items must look like {left}={right}")
            if allowed and value not in allowed:
                raise ValueError(f"items must end in ={' or ='.join(allowed)}")
            items.append((key, value))
        return tuple(items)

    return parse


def log_level(text: str) -> Any:
    value = text.upper()
    if not value:
        return DEFAULT
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


# --- the table ---------------------------------------------------------------------------------

REQUIRED: Any = object()  # the default of a setting that has none
DERIVED: Any = object()  # the default is computed from other settings or the open-files limit (see _derive)


@dataclass(frozen=True)
class Setting:
    env: str  # the environment variable
    field: str  # the Settings attribute it fills
    parse: Callable[[str], Any]
    default: Any
    doc: str
    example: str = ""  # what `.env.example` shows, when not the default


SETTINGS: tuple[Setting, ...] = (
    # Dify
    Setting("DIFY_API_BASE", "dify_api_base", url, REQUIRED,
            "Dify service API base, ending in /v1", "https://api.dify.ai/v1"),
    Setting("DIFY_API_KEYS", "dify_api_keys", comma_list, REQUIRED,
            "comma list of Dify app keys; each app is one model",
            "app-xxxxxxxxxxxxxxxxxxxxxxxx,app-yyyyyyyyyyyyyyyyyyyyyyyy"),
    Setting("TIMEOUT", "timeout", number(1), 30.0,
            "seconds: Dify connect timeout, longest silence between stream bytes, longest write to a client"),
    Setting("APP_INFO_TTL", "app_info_ttl", number(1), 300.0,
            "seconds an app's /info and /parameters are cached"),
    # Clients
    Setting("VALID_API_KEYS", "valid_api_keys", comma_list, (),
            "comma list of keys clients must present (empty = open access)", "sk-change-me"),
    Setting("ALLOW_OPEN_ACCESS", "allow_open_access", flag, False,
            "allow empty VALID_API_KEYS on a non-loopback SERVER_HOST"),
    Setting("CORS_ALLOW_ORIGINS", "cors_allow_origins", comma_list, ("*",),
            "comma list of allowed browser origins, or *"),
    # Conversations and answers
    Setting("CONVERSATION_MEMORY_MODE", "conversation_memory_mode", whole(0, 2), 2,
            "0 stateless, 1 history_message, 2 zero-width conversation ids"),
    Setting("ZERO_WIDTH_ID", "zero_width_id", choice("every", "first"), "every",
            "mode 2: the conversation id on every assistant reply, or only on the first (the original's way)"),
    Setting("USER_HEADER", "user_header", text_or_none, None,
            "a trusted request header that names the Dify user (e.g. X-OpenWebUI-User-Id)"),
    Setting("MODEL_ID_STYLE", "model_id_style", choice("exact", "slug"), "exact",
            "model ids: the exact Dify app names (spaces kept), or slugs (spaces and / as -)"),
    Setting("MODEL_ALIASES", "model_aliases", pairs("alias", "model"), (),
            "comma list of alias=model, e.g. gpt-4o-mini=my-app"),
    Setting("DEFAULT_MODEL", "default_model", text_or_none, None,
            "model that serves any unknown model name (empty: unknown names are 404)"),
    Setting("TOOL_CALLING", "tool_calling", choice("prompt", "off"), "prompt",
            "requests' tools: described in the query and parsed from the answer (prompt), or ignored (off)"),
    Setting("TOOL_CALLING_BY_MODEL", "tool_calling_by_model", pairs("model", "mode", ("prompt", "off")), (),
            "per-model TOOL_CALLING, comma list of model=prompt|off"),
    Setting("CITATIONS", "citations", choice("field", "markdown", "off"), "field",
            "knowledge-base sources of an answer: a citations field, a Sources list in the text, or off"),
    Setting("THINK_TAGS", "think_tags", choice("reasoning", "content"), "reasoning",
            "<think> text as reasoning_content (reasoning) or kept in the content (content)"),
    Setting("AGENT_THOUGHTS", "agent_thoughts", choice("reasoning", "tool_calls", "hidden"), "reasoning",
            "agent apps' tool steps: reasoning, tool_calls or hidden"),
    Setting("WORKFLOW_PROGRESS", "workflow_progress", flag, False,
            "show chatflow/workflow nodes as they run, as reasoning_content"),
    # Streams
    Setting("FIRST_EVENT_WAIT", "first_event_wait", number(0), 10.0,
            "seconds a stream waits for Dify's first event before committing to HTTP 200"),
    Setting("KEEPALIVE_INTERVAL", "keepalive_interval", number(0.05), 10.0,
            "seconds of silence before a stream gets a `: ping` comment"),
    Setting("SMOOTH_OUTPUT", "smooth_output", flag, True, "smooth-output pacer for streams (on/off)"),
    Setting("SMOOTH_MAX_LAG_MS", "smooth_max_lag", number(0, scale=0.001), 0.05,
            "the most the pacer may delay the end of a stream, a tool call or an error (ms)"),
    Setting("STREAM_DEADLINE", "stream_deadline", number(1), 1200.0,
            "seconds after which a stream ends with an error whatever Dify does"),
    # Limits
    Setting("MAX_CONCURRENT_REQUESTS", "max_concurrent_requests", whole(1), DERIVED,
            "per worker: requests calling Dify at once (default 90% of WORKER_CONNECTIONS)"),
    Setting("MAX_REQUEST_MB", "max_request_bytes", megabytes, 32 * 1024 * 1024,
            "largest request body, in MB"),
    Setting("MAX_MESSAGES", "max_messages", whole(1), 1000, "most messages a request may carry"),
    Setting("MAX_PROMPT_CHARS", "max_prompt_chars", whole(1), 1_000_000,
            "most characters of message (or prompt) text a request may carry"),
    Setting("MAX_CHOICES", "max_choices", whole(1), 8, "upper bound for n (each choice is one Dify run)"),
    Setting("MAX_UPLOAD_MB", "max_upload_bytes", megabytes, 10 * 1024 * 1024,
            "largest file a message may carry, in MB"),
    # Server (gunicorn.conf.py)
    Setting("SERVER_HOST", "server_host", text_or_default, "127.0.0.1", "bind address"),
    Setting("SERVER_PORT", "server_port", whole(0, 65535), 8000, "bind port"),
    Setting("WORKERS", "workers", whole(1), 2, "gunicorn gevent workers"),
    Setting("WORKER_CONNECTIONS", "worker_connections", whole(1), DERIVED,
            "connections per worker; also the size of the Dify connection pool "
            "(default: from the open-files limit, (limit - 100) / 2, at most 10000)"),
    Setting("GUNICORN_TIMEOUT", "gunicorn_timeout", whole(0), 60, "worker watchdog in seconds (not a stream limit)"),
    Setting("GRACEFUL_TIMEOUT", "graceful_timeout", whole(0), 120,
            "seconds in-flight streams get to finish on SIGTERM/SIGHUP"),
    Setting("KEEPALIVE", "keepalive", whole(0), 5, "HTTP keep-alive seconds"),
    Setting("ACCESS_LOG", "access_log", text_or_none, "-", "gunicorn access log (- stdout, empty for none)"),
    Setting("LOG_LEVEL", "log_level", log_level, "INFO", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Setting("LOG_FORMAT", "log_format", choice("text", "json"), "text",
            "text, or json: every log line (access and application) one JSON object"),
    # Operations
    Setting("METRICS", "metrics", flag, True, "Prometheus metrics at GET /metrics, added up over the workers"),
    Setting("METRICS_PUBLIC", "metrics_public", flag, False,
            "serve /metrics without a client key even when VALID_API_KEYS is set"),
)


@dataclass(frozen=True)
class Settings:
    """The values of SETTINGS, by field (see the table for each one's meaning)."""

    dify_api_base: str
    dify_api_keys: tuple[str, ...]
    timeout: float
    app_info_ttl: float
    valid_api_keys: tuple[str, ...]
    allow_open_access: bool
    cors_allow_origins: tuple[str, ...]
    conversation_memory_mode: int
    zero_width_id: str
    user_header: str | None
    model_id_style: str
    model_aliases: tuple[tuple[str, str], ...]
    default_model: str | None
    tool_calling: str
    tool_calling_by_model: tuple[tuple[str, str], ...]
    citations: str
    think_tags: str
    agent_thoughts: str
    workflow_progress: bool
    first_event_wait: float
    keepalive_interval: float
    smooth_output: bool
    smooth_max_lag: float
    stream_deadline: float
    max_concurrent_requests: int
    max_request_bytes: int
    max_messages: int
    max_prompt_chars: int
    max_choices: int
    max_upload_bytes: int
    server_host: str
    server_port: int
    workers: int
    worker_connections: int
    gunicorn_timeout: int
    graceful_timeout: int
    keepalive: int
    access_log: str | None
    log_level: str
    log_format: str
    metrics: bool
    metrics_public: bool

    @property
    def open_access(self) -> bool:
        return not self.valid_api_keys

    @property
    def pool_size(self) -> int:
        """Connections kept to Dify: one per client connection a worker may hold."""
        return self.worker_connections


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


def _value(setting: Setting, env: Mapping[str, str]) -> Any:
    raw = env.get(setting.env)
    value = DEFAULT if raw is None else None
    if raw is not None:
        try:
            value = setting.parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(f"{setting.env} {exc} (got {raw!r})") from None
    if value is DEFAULT and setting.default is REQUIRED:
        raise ConfigError(f"{setting.env} is required: {setting.doc}, e.g. {setting.example}")
    return setting.default if value is DEFAULT else value


# A held stream keeps two files open in its worker, the client's socket and Dify's; the rest of a
# worker (its listening socket, logs, metrics files, event loop, stop calls in flight) fits in a
# reserve. More connections than MAX_WORKER_CONNECTIONS belong on more workers (one core each).
FD_RESERVE = 100
MAX_WORKER_CONNECTIONS = 10_000
MAX_OPEN_FILES = 1 << 20  # Linux's default fs.nr_open: the soft limit when the hard one is unlimited


def connections_for(open_files: int) -> int:
    """WORKER_CONNECTIONS' default for a worker that may open `open_files` files."""
    return max(1, min(MAX_WORKER_CONNECTIONS, (open_files - FD_RESERVE) // 2))


def open_files_limit() -> int:
    """This process's soft limit on open files (a gunicorn worker inherits its master's)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_OPEN_FILES if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (at most MAX_OPEN_FILES); returns the
    limit now in force. gunicorn.conf.py calls it in the master, before the settings are read
    and before the workers fork, so that they inherit it and size WORKER_CONNECTIONS from it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        # A kernel maximum below the hard limit (macOS) refuses it: the soft limit stays.
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return open_files_limit()


def _derive(values: dict[str, Any], open_files: int) -> None:
    """Defaults computed from other settings, and from the open-files limit."""
    if values["worker_connections"] is DERIVED:
        values["worker_connections"] = connections_for(open_files)
    if values["max_concurrent_requests"] is DERIVED:
        # Below WORKER_CONNECTIONS, so that refusals and health checks still get through.
        values["max_concurrent_requests"] = max(1, values["worker_connections"] * 9 // 10)


def load_settings(env: Mapping[str, str] | None = None, open_files: int | None = None) -> Settings:
    """Build the Settings from `env` (default: `.env` merged under the process environment) and
    the open-files limit (default: this process's)."""
    if env is None:
        load_env_file()
        env = os.environ
    values = {setting.field: _value(setting, env) for setting in SETTINGS}
    _derive(values, open_files_limit() if open_files is None else open_files)
    settings = Settings(**values)
    if settings.open_access and not settings.allow_open_access and not is_loopback(settings.server_host):
        raise ConfigError(
            f"VALID_API_KEYS is empty while SERVER_HOST={settings.server_host} is not a loopback "
            "address: set VALID_API_KEYS, or ALLOW_OPEN_ACCESS=true to serve without keys"
        )
    return settings
