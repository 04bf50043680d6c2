"""The container files (Dockerfile, .dockerignore, compose.yaml) kept honest without a container
engine: what they name exists, the image's command starts the real gateway from the repository
root and stops on SIGTERM, and its health check asks a running gateway."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from config import SETTINGS
from openai_to_dify import DEMO_APP_KEYS
from tests.conftest import CHAT_KEYS, CLIENT_KEY
from tests.gateway_process import ROOT, free_port
from tests.scenarios import EVENT_WAIT, wait_for

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                            if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
    return result


def arguments_of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def copied_sources() -> list[str]:
    sources = []
    for arguments in arguments_of("COPY"):
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources += words[:-1]
    return sources


def image_env() -> dict[str, str]:
    env = {}
    for arguments in arguments_of("ENV"):
        for word in shlex.split(arguments):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def exec_form(arguments: str) -> list[str]:
    """A CMD/ENTRYPOINT in exec form: a JSON array of strings (shell form fails the test)."""
    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        raise AssertionError(f"not exec form (a JSON array): {arguments}") from None
    assert isinstance(argv, list) and argv and all(isinstance(word, str) for word in argv), arguments
    return argv


def healthcheck_command() -> list[str]:
    [arguments] = arguments_of("HEALTHCHECK")
    options, separator, command = arguments.partition("CMD ")
    assert separator, f"HEALTHCHECK without CMD: {arguments}"
    return exec_form(command)


def image_command() -> list[str]:
    """ENTRYPOINT + CMD, as the container runs them."""
    entrypoint = arguments_of("ENTRYPOINT")
    command = arguments_of("CMD")
    assert command or entrypoint, "the Dockerfile has neither CMD nor ENTRYPOINT"
    return (exec_form(entrypoint[-1]) if entrypoint else []) + (exec_form(command[-1]) if command else [])


def in_venv(argv: list[str]) -> list[str]:
    """The command with its program found where the image's PATH would find it: beside this Python."""
    program = shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert program, f"{argv[0]} is not installed beside {sys.executable}"
    return [program, *argv[1:]]


# --- .dockerignore ---------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def ignored(path: str) -> bool:
    """Whether the build context leaves `path` out: a pattern matching it or a folder above it,
    the last matching line winning (`!` lines bring paths back)."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:count]) for count in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negated
    return result


def test_the_dockerignore_keeps_out_environments_history_caches_and_secrets():
    for path in (".venv/bin/python", ".venv-legacy/bin/python", ".git/HEAD", ".env", ".lock-venv/bin/pip",
                 "tests/codex/node_modules/@openai/codex/bin/codex.js", "__pycache__/config.cpython-311.pyc",
                 "edge/__pycache__/chat.cpython-311.pyc", ".pytest_cache/README.md", ".ruff_cache/CACHEDIR.TAG",
                 ".hypothesis/examples/x", "bench/results/report.json"):
        assert ignored(path), f".dockerignore lets {path} into the build context"
    for path in ("requirements.lock", "openai_to_dify.py", "edge/chat.py", ".env.example", "Dockerfile"):
        assert not ignored(path), f".dockerignore leaves out {path}"


# --- the Dockerfile --------------------------------------------------------------------------------


def test_the_dockerfile_copies_existing_files_and_every_local_module_the_gateway_imports():
    sources = copied_sources()
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not ignored(source.rstrip("/")), f"the Dockerfile copies {source}, which .dockerignore leaves out"
    copied_files = [path for source in sources for path in
                    ([ROOT / source] if (ROOT / source).is_file() else sorted((ROOT / source).rglob("*.py")))]
    # Modules and packages (namespace packages too: folders holding Python files) of the repository.
    local = {path.stem if path.is_file() else path.name for path in ROOT.iterdir()
             if path.suffix == ".py" or (path.is_dir() and any(path.glob("*.py")))}
    imported = set()
    for path in copied_files:
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    top_level = {source.rstrip("/").split("/")[0].removesuffix(".py") for source in sources}
    missing = (imported & local) - top_level
    assert not missing, f"the image lacks local modules its code imports: {sorted(missing)}"
    assert {"openai_to_dify", "config", "gunicorn.conf", "openapi.yaml", "dify_emulator"} <= top_level


def test_the_dockerfile_installs_the_pinned_lock_without_a_cache():
    installs = [arguments for arguments in arguments_of("RUN") if "pip install" in arguments]
    assert installs == ["pip install --no-cache-dir -r requirements.lock"]
    assert "requirements.lock" in copied_sources()
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==[^=\s]+", pin) for pin in pins), pins


def test_the_image_is_slim_python_runs_as_a_user_and_listens_on_all_interfaces():
    names = [name for name, _ in instructions()]
    assert arguments_of("FROM") == ["python:3.11-slim"]
    [user] = arguments_of("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert names.index("USER") < names.index("CMD") and "RUN" not in names[names.index("USER"):]
    assert arguments_of("EXPOSE") == ["8000"]
    env = image_env()
    assert env["SERVER_HOST"] == "0.0.0.0" and env["SERVER_PORT"] == "8000"
    assert "/readyz" in " ".join(healthcheck_command())


def test_the_image_command_serves_the_gateway_passes_its_health_check_and_stops_on_sigterm(emulator, tmp_path):
    command = image_command()
    port = free_port()
    env = {**os.environ, **image_env(), "SERVER_PORT": str(port), "OPENDIFY_ENV_FILE": os.devnull,
           "DIFY_API_BASE": emulator.base_url, "DIFY_API_KEYS": CHAT_KEYS, "VALID_API_KEYS": CLIENT_KEY,
           "WORKERS": "1", "GRACEFUL_TIMEOUT": "5", "ACCESS_LOG": ""}
    health = in_venv(healthcheck_command())
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(in_venv(command), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            assert process.poll() is None, f"{command} exited with {process.returncode}:\n{log_path.read_text()}"
            try:
                return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, f"{command} answering /readyz")
        assert subprocess.run(health, env=env, timeout=EVENT_WAIT).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(EVENT_WAIT) == 0, log_path.read_text()
        # Stopped: the health check says so.
        assert subprocess.run(health, env=env, timeout=EVENT_WAIT, capture_output=True).returncode != 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# --- compose.yaml ----------------------------------------------------------------------------------


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_serves_the_gateway_from_this_image(compose):
    gateway = compose["services"]["gateway"]
    assert gateway["build"] == "." and (ROOT / "Dockerfile").exists()
    assert gateway["env_file"] == [{"path": ".env", "required": False}]
    environment = gateway["environment"]
    assert environment["SERVER_HOST"] == "0.0.0.0"
    [published] = gateway["ports"]
    host_port, container_port = published.split(":")
    assert container_port == environment["SERVER_PORT"] == arguments_of("EXPOSE")[0] == host_port
    assert gateway["restart"] == "unless-stopped"  # back after a crash, not after `docker compose stop`
    assert "healthcheck" not in gateway, "the gateway keeps the image's health check"
    graceful = next(setting.default for setting in SETTINGS if setting.env == "GRACEFUL_TIMEOUT")
    assert seconds(gateway["stop_grace_period"]) > graceful
    assert "profiles" not in gateway


def test_the_compose_demo_profile_runs_the_emulator_and_points_the_gateway_at_it(compose):
    services = compose["services"]
    emulator = services["emulator"]
    assert emulator["profiles"] == ["demo"]
    assert emulator["image"] == services["gateway"]["image"] and emulator["build"] == "."
    command = emulator["command"]
    assert command[:3] == ["python", "-m", "dify_emulator"] and "dify_emulator/" in copied_sources()
    assert (ROOT / "dify_emulator" / "__main__.py").exists()
    host, port = command[command.index("--host") + 1], command[command.index("--port") + 1]
    assert host == "0.0.0.0"
    # The emulator's own health check (the image's asks a gateway).
    assert f"127.0.0.1:{port}/v1/" in " ".join(emulator["healthcheck"]["test"])
    gateway = services["gateway"]
    assert gateway["depends_on"]["emulator"] == {"condition": "service_healthy", "required": False}
    # Without DIFY_API_BASE and DIFY_API_KEYS, the gateway serves the emulator's demo apps.
    default = re.compile(r"\$\{(\w+):-(.*)\}")
    base = default.fullmatch(gateway["environment"]["DIFY_API_BASE"])
    keys = default.fullmatch(gateway["environment"]["DIFY_API_KEYS"])
    assert base.group(1) == "DIFY_API_BASE" and base.group(2) == f"http://emulator:{port}/v1"
    assert keys.group(1) == "DIFY_API_KEYS" and keys.group(2) == DEMO_APP_KEYS


DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), COMPOSE)
# `NAME=value [NAME=value ...] docker compose ...`: variables set in the shell for one command.
SHELL_PREFIX = re.compile(r"((?:\b[A-Z][A-Z0-9_]*=\S*[ \t]+)+)docker compose\b")
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_variables_the_docs_set() -> set[str]:
    """The variables the README, docs/ and compose.yaml tell a user to set for Compose: in front of
    a `docker compose` command, in the .env the compose paragraph of docs/deploy.md has them fill
    in, and the keys the container needs to start (docs/deploy.md: "without client keys: set ...")."""
    names = set()
    for path in DOCS:
        for match in SHELL_PREFIX.finditer(path.read_text()):
            names |= set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", match.group(1)))
    deploy = re.sub(r"\s+", " ", (ROOT / "docs" / "deploy.md").read_text())
    for sentence in (r"`compose\.yaml` runs the same image: `cp \.env\.example \.env`, fill in (.*?), then",
                     r"without client keys: set (.*?) when"):
        found = re.search(sentence, deploy)
        assert found, f"docs/deploy.md no longer says {sentence!r}: update this test"
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]*)(?:=[^`]*)?`", found.group(1)))
    return names


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME-default}` against `shell`."""
    def one(match: re.Match[str]) -> str:
        return shell.get(match.group(1)) or (match.group(2) or "")

    return INTERPOLATION.sub(one, value)


def test_compose_passes_every_variable_the_docs_tell_users_to_set(compose):
    """Compose hands the container only the variables `environment:` lists (and .env's, through
    env_file): a variable set in the shell, as in `VALID_API_KEYS=sk-demo docker compose --profile
    demo up`, must be listed, taken from the shell."""
    names = compose_variables_the_docs_set()
    assert {"VALID_API_KEYS", "DIFY_API_BASE", "DIFY_API_KEYS", "ALLOW_OPEN_ACCESS"} <= names, names
    config_names = {setting.env for setting in SETTINGS}
    environment = compose["services"]["gateway"]["environment"]
    for name in sorted(names):
        assert name in config_names, f"the docs set {name}, which is not a setting"
        assert name in environment, f"compose.yaml does not pass {name} to the gateway"
        assert interpolate(str(environment[name]), {name: "sk-demo"}) == "sk-demo", (
            f"compose.yaml does not take {name} from the shell: {environment[name]!r}")
    # The documented demo command: the gateway gets the client key it needs on 0.0.0.0.
    assert interpolate(environment["VALID_API_KEYS"], {"VALID_API_KEYS": "sk-demo"}) == "sk-demo"
    assert interpolate(environment["VALID_API_KEYS"], {}) == ""  # unset: .env's value, or none
