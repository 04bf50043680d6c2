"""nginx in front of two gateway instances, served for real.

nginx runs deploy/nginx.conf itself, with its two upstream addresses pointed at two gateways
started here and its log paths moved under a temporary directory. The tests show that streams
pass through unbuffered, that a memory-mode-2 conversation continues on whichever instance a turn
lands, that request ids and bodies up to MAX_REQUEST_MB reach the gateway, and that a rolling restart
(docs/deploy.md) under load fails no request and cuts no stream.

nginx must be installed (`.ci/run` installs it in CI): a missing nginx fails these tests.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests import gateway_process
from tests.conftest import CLIENT_KEY
from tests.gateway_process import ROOT, GatewayProcess, free_port
from tests.scenarios import EVENT_WAIT, chat_requests, user_message, wait_for
from tests.test_conversation_memory import EXPECTED_USER, ZERO_WIDTH, dify_messages

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# The instances share nothing: mode 2 keeps conversations in the chat history. GRACEFUL_TIMEOUT
# covers the longest stream these tests hold across a SIGTERM.
GATEWAY_ENV = {"CONVERSATION_MEMORY_MODE": "2", "GRACEFUL_TIMEOUT": "30"}
AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}
MB = 1024 * 1024


def nginx_binary() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return next((path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None)


def nginx_missing_message() -> str:
    if os.environ.get("CI"):
        return "nginx is missing on this CI machine: .ci/run installs it (apt-get install -y nginx-light)"
    return ("nginx is not installed, and these tests run a real nginx in front of the gateway: install it "
            "(Debian/Ubuntu: `apt-get install nginx`, or nginx-light) and run them again")


def test_nginx_is_installed():
    assert nginx_binary(), nginx_missing_message()


# --- nginx and the instances behind it -----------------------------------------------------------


def nginx_config(shipped: str, directory: Path, listen_port: int, upstream_ports: tuple[int, int],
                 down: frozenset[int] = frozenset()) -> str:
    """deploy/nginx.conf with the test's ports and paths, and the instances in `down` marked down.
    Each place it changes must be there once, so the test keeps running the shipped settings and
    notices when their shape changes."""
    temp_paths = "".join(f"    {kind}_temp_path {directory / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    changes = [
        ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{upstream_ports[0]} "),
        ("server 127.0.0.1:8002 ", f"server 127.0.0.1:{upstream_ports[1]} "),
        ("listen 8000;", f"listen 127.0.0.1:{listen_port};"),
        ("/var/log/nginx/", f"{directory}/"),
        ("http {\n", "http {\n" + temp_paths),
        # Which instance served a response, for the tests to see.
        ("proxy_pass http://opendify;\n",
         "proxy_pass http://opendify;\n            add_header X-Upstream $upstream_addr always;\n"),
    ]
    for old, new in changes:
        assert shipped.count(old) == 1, f"deploy/nginx.conf should contain {old!r} exactly once"
        shipped = shipped.replace(old, new)
    for port in down:
        shipped = re.sub(rf"(server 127\.0\.0\.1:{port} [^;]*);", r"\1 down;", shipped)
    if os.geteuid() == 0:  # the workers would run as nobody, who cannot enter the temporary directory
        shipped = "user root;\n" + shipped
    return shipped


class Nginx:
    """A real nginx in the foreground on a free port, its files under `directory`."""

    def __init__(self, binary: str, directory: Path, upstream_ports: tuple[int, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.upstream_ports = upstream_ports
        self.config = directory / "nginx.conf"
        self.error_log = directory / "error.log"
        self._write_config(frozenset())
        self.log = directory / "nginx.out"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "-p", f"{directory}/", "-c", str(self.config), "-e", str(self.error_log),
                 "-g", f"daemon off; pid {directory / 'nginx.pid'};"],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._answers, "nginx answering /readyz from an instance")
        except AssertionError:
            self.stop()
            raise AssertionError(f"nginx did not come up:\n{self.errors()}") from None

    def _write_config(self, down: frozenset[int]) -> None:
        self.config.write_text(nginx_config(NGINX_CONF.read_text(), self.directory, self.port, self.upstream_ports,
                                            down))

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"nginx exited with {self.process.returncode}:\n{self.errors()}"
        try:
            return requests.get(self.url + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def reload(self, down: frozenset[int] = frozenset()) -> None:
        """`nginx -s reload` with these instances marked down; returns once no worker with the old
        configuration takes new requests (they only finish the ones they have)."""
        old = self.workers()
        self._write_config(down)
        self.process.send_signal(signal.SIGHUP)
        wait_for(lambda: self._reloaded(old), f"nginx reloading its configuration\n{self.errors()}")

    def _reloaded(self, old: set[int]) -> bool:
        assert self.process.poll() is None, f"nginx exited with {self.process.returncode}:\n{self.errors()}"
        return bool(self.workers() - old) and all(_shutting_down(pid) for pid in old)

    def refused(self, port: int) -> int:
        """How many connections to instance `port` were refused (nginx moved those requests on)."""
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        return sum(1 for line in text.splitlines()
                   if "(111: Connection refused) while connecting to upstream" in line and f":{port}/" in line)

    def errors(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-5000:] for path in (self.log, self.error_log)
                         if path.exists())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _shutting_down(pid: int) -> bool:
    """An nginx worker gone, or told to quit (it closed its listening sockets first)."""
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True


@dataclass
class Cluster:
    nginx: Nginx
    gateways: list[GatewayProcess]
    start_gateway: Callable[..., GatewayProcess]

    @property
    def chat_url(self) -> str:
        return self.nginx.url + "/v1/chat/completions"

    def restart_on_same_port(self, index: int) -> GatewayProcess:
        """Start instance `index` again on its port (GatewayProcess picks a free port itself)."""
        port = self.gateways[index].port
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gateway_process, "free_port", lambda: port)
            self.gateways[index] = self.start_gateway(**GATEWAY_ENV)
        return self.gateways[index]


@pytest.fixture(scope="module")
def cluster(start_gateway, tmp_path_factory) -> Iterator[Cluster]:
    binary = nginx_binary()
    if not binary:
        pytest.fail(nginx_missing_message())
    gateways = [start_gateway(**GATEWAY_ENV) for _ in range(2)]
    nginx = Nginx(binary, tmp_path_factory.mktemp("nginx"), (gateways[0].port, gateways[1].port))
    cluster = Cluster(nginx, gateways, start_gateway)
    yield cluster
    nginx.stop()
    for gateway in cluster.gateways:
        gateway.stop()


def served_by(response: requests.Response) -> int | None:
    """The instance (its port) that answered: the last address nginx tried (None: nginx itself)."""
    upstream = response.headers.get("X-Upstream", "").split(",")[-1].strip()
    return int(upstream.rsplit(":", 1)[1]) if ":" in upstream else None


def visible(text: str) -> str:
    """The text without mode 2's zero-width conversation ids."""
    return "".join(character for character in text if character not in ZERO_WIDTH)


def read_stream(lines: Iterator[str]) -> tuple[str, bool]:
    """The content of (the rest of) a chat-completion stream's lines, and whether it ended with
    `data: [DONE]`; an error event fails the test."""
    content = ""
    for line in lines:
        if line == "data: [DONE]":
            return content, True
        if line.startswith("data: "):
            event = json.loads(line[len("data: "):])
            assert "error" not in event, f"error event in the stream: {event}"
            content += event["choices"][0]["delta"].get("content") or ""
    return content, False


def first_content(lines: Iterator[str]) -> str:
    """The first non-empty content of a chat-completion stream (after the role chunk)."""
    for line in lines:
        if line.startswith("data: {"):
            content = json.loads(line[len("data: "):])["choices"][0]["delta"].get("content")
            if content:
                return content
    raise AssertionError("the stream ended before any content")


def chat(url: str, messages: list[dict], stream: bool):
    """One chat completion through nginx, on a new connection: (response, content, whether it
    ended with [DONE] or was not streamed)."""
    body = {"model": "demo-chat", "stream": stream, "messages": messages}
    response = requests.post(url, json=body, headers=AUTH, stream=stream, timeout=(10, EVENT_WAIT))
    if response.status_code != 200:
        return response, response.text, False
    if stream:
        content, done = read_stream(response.iter_lines(decode_unicode=True))
        return response, content, done
    return response, response.json()["choices"][0]["message"]["content"], True


# --- the tests -------------------------------------------------------------------------------------


def test_the_first_chunk_passes_nginx_while_dify_is_still_stalled(cluster, recorded):
    before = set(recorded.streams()["active_tasks"])
    # Dify sends its first token, then nothing at all until the client leaves.
    body = {"model": "demo-chat", "stream": True, "messages": user_message("unbuffered", tokens=3, stall_after=1)}
    with requests.post(cluster.chat_url, json=body, headers=AUTH, stream=True, timeout=(10, EVENT_WAIT)) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Encoding" not in response.headers
        # A buffering proxy would hold this back: the read times out and the test fails.
        assert first_content(response.iter_lines(decode_unicode=True)) == "w1 "
        stalled = set(recorded.streams()["active_tasks"]) - before
        assert stalled, "the first chunk arrived, and Dify's run is still open"
    # The client left through nginx: the gateway noticed and ended the Dify run.
    wait_for(lambda: not stalled & set(recorded.streams()["active_tasks"]), "the stalled Dify run ended")


def test_a_mode_2_conversation_continues_on_either_instance(cluster, recorded):
    ports = {gateway.port for gateway in cluster.gateways}
    messages: list[dict] = []
    served, conversations, questions = [], [], []
    # Turns until one that continues the conversation lands on the other instance than the turn
    # before it (least_conn takes turns between idle instances, so the second turn already does).
    while len(served) < 2 or served[-1] == served[-2]:
        assert len(served) < 8, f"eight turns, and never on the other instance: {served}"
        questions.append(f"question {len(served) + 1}")
        messages.append({"role": "user", "content": questions[-1]})
        response, content, done = chat(cluster.chat_url, messages, stream=len(served) % 2 == 1)
        assert response.status_code == 200 and done, content
        assert visible(content) == f"You said: {questions[-1]}"
        served.append(served_by(response))
        conversations.append(response.headers["X-Dify-Conversation-Id"])
        messages.append({"role": "assistant", "content": content})  # as NextChat sends it back, ids included
    assert set(served) == ports
    # One Dify conversation throughout: every turn after the first continued it.
    [conversation] = set(conversations)
    calls = chat_requests(recorded)
    assert [call["json"]["query"] for call in calls] == questions
    assert [call["json"]["conversation_id"] for call in calls] == [""] + [conversation] * (len(questions) - 1)
    assert dify_messages(recorded, conversation) == [(question, f"You said: {question}") for question in questions]
    assert {call["json"]["user"] for call in calls} == {EXPECTED_USER}


def test_request_ids_pass_through_nginx(cluster):
    url = cluster.nginx.url + "/v1/models"
    chosen = requests.get(url, headers={**AUTH, "X-Request-Id": "trace-4711"}, timeout=EVENT_WAIT)
    assert chosen.status_code == 200 and chosen.headers["X-Request-Id"] == "trace-4711"
    # Without one, nginx's own id (32 hex digits) is the one the gateway answers with and logs.
    generated = requests.get(url, headers=AUTH, timeout=EVENT_WAIT)
    assert generated.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-Id"])


# Every spelling of /metrics the gateway serves: it merges slashes and ignores a trailing one,
# after the server has undone %-escapes.
METRICS_SPELLINGS = ("/metrics", "/metrics/", "//metrics", "/metrics//", "//metrics//", "/%6Detrics", "/metrics%2F",
                     "/%2Fmetrics", "/metrics/?name=x")


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written (requests and urllib3 would normalise it)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=EVENT_WAIT)
    try:
        connection.request("GET", path, headers=AUTH)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_no_spelling_of_metrics_passes_nginx(cluster):
    instance = cluster.gateways[0].port
    for path in METRICS_SPELLINGS:
        status, body = raw_get(instance, path)
        assert status == 200 and b"opendify_requests_total" in body, f"the instance serves metrics at {path}"
        status, body = raw_get(cluster.nginx.port, path)
        assert status == 404 and b"opendify_" not in body, f"nginx passed {path} to an instance"


def test_bodies_up_to_max_request_mb_reach_the_gateway(cluster):
    def post(size: int) -> requests.Response:
        body = b'{"model": "demo-chat", "messages": [{"role": "user", "content": "' + b"x" * size + b'"}]}'
        return requests.post(cluster.chat_url, data=body, timeout=EVENT_WAIT,
                             headers={**AUTH, "Content-Type": "application/json"})

    # Just over MAX_REQUEST_MB (32): nginx passes it, the gateway refuses it with its own error.
    by_gateway = post(32 * MB + 1000)
    assert by_gateway.status_code == 413 and served_by(by_gateway) in {g.port for g in cluster.gateways}
    assert by_gateway.json()["error"]["code"] == "request_too_large"
    # Over client_max_body_size: nginx refuses it itself, in the same shape.
    by_nginx = post(34 * MB)
    assert by_nginx.status_code == 413 and served_by(by_nginx) is None
    assert by_nginx.headers["Content-Type"] == "application/json"
    assert by_nginx.json()["error"]["code"] == "request_too_large"


@dataclass
class Outcome:
    thread: int
    stream: bool
    started: float
    ended: float
    status: int | None = None
    port: int | None = None
    problem: str | None = None


@dataclass
class Load:
    """Client threads sending requests through nginx without a pause, streaming and not; each
    request on a new connection (an nginx reload closes idle keep-alive connections, which SDK
    clients retry and plain `requests` does not)."""

    url: str
    threads: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._run, args=(index,), daemon=True)
                         for index in range(self.threads)]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(EVENT_WAIT + 15)
            assert not worker.is_alive(), "a load thread is stuck"

    def _run(self, index: int) -> None:
        stream = index % 2 == 0
        count = 0
        while not self._stop.is_set():
            count += 1
            text = f"load {index}.{count}"
            # Streams of 8 words about 40 ms apart; blocking answers after 30 ms (Dify is never
            # instant, and the machine stays free for the restarts).
            messages = (user_message(text, tokens=8, delay_ms=40) if stream
                        else user_message(text, first_delay_ms=30))
            expected = "".join(f"w{i} " for i in range(1, 9)) if stream else f"You said: {text}"
            outcome = Outcome(index, stream, time.monotonic(), 0.0)
            try:
                response, content, done = chat(self.url, messages, stream)
                outcome.status, outcome.port = response.status_code, served_by(response)
                if response.status_code != 200:
                    outcome.problem = f"HTTP {response.status_code}: {content[:300]}"
                elif not done:
                    outcome.problem = f"stream cut after {content!r}"
                elif visible(content) != expected:
                    outcome.problem = f"content {content!r}"
            except (requests.RequestException, AssertionError, KeyError, ValueError) as exc:
                outcome.problem = f"{type(exc).__name__}: {exc}"
            outcome.ended = time.monotonic()
            self.outcomes.append(outcome)

    def served_since(self, port: int, moment: float) -> bool:
        return any(outcome.port == port and outcome.started > moment and outcome.problem is None
                   for outcome in list(self.outcomes))


def hold_a_stream_on(cluster: Cluster, port: int) -> tuple[requests.Response, Iterator[str]]:
    """A stream through nginx that instance `port` serves and that is in flight: its first word
    has arrived, and Dify pauses (pings only) for 3 s before the rest."""
    body = {"model": "demo-chat", "stream": True,
            "messages": user_message("held", tokens=4, pause_after=1, pause_s=3)}
    deadline = time.monotonic() + EVENT_WAIT
    while True:
        response = requests.post(cluster.chat_url, json=body, headers=AUTH, stream=True, timeout=(10, EVENT_WAIT))
        assert response.status_code == 200, response.text
        if served_by(response) == port:
            lines = response.iter_lines(decode_unicode=True)
            assert first_content(lines) == "w1 "
            return response, lines
        response.close()  # on the other instance: try again
        assert time.monotonic() < deadline, f"no stream landed on instance {port}"


def test_a_rolling_restart_under_load_fails_no_request_and_cuts_no_stream(cluster):
    """docs/deploy.md's rolling restart, one instance at a time, while client threads keep sending."""
    load = Load(cluster.chat_url)
    load.start()
    try:
        for index in range(2):
            gateway = cluster.gateways[index]
            port = gateway.port
            wait_for(lambda port=port: load.served_since(port, 0.0), f"load reaching instance {port}")
            response, lines = hold_a_stream_on(cluster, port)
            # 1. nginx sends the instance no new requests (it finishes the ones it has).
            cluster.nginx.reload(down=frozenset({port}))
            # 2. SIGTERM: the stream in flight finishes (GRACEFUL_TIMEOUT), then the instance exits.
            stopped_at = time.monotonic()
            gateway.signal(signal.SIGTERM)
            rest, done = read_stream(lines)
            assert visible(rest) == "w2 w3 w4 " and done
            response.close()
            gateway.process.wait(EVENT_WAIT)
            assert gateway.process.returncode == 0
            # 3. Back in nginx's list before it listens again: nginx tries it, the connection is
            #    refused, and the request moves to the other instance (proxy_next_upstream error).
            refused = cluster.nginx.refused(port)
            cluster.nginx.reload()
            wait_for(lambda port=port, refused=refused: cluster.nginx.refused(port) > refused,
                     f"nginx trying the stopped instance {port}")
            # 4. Started again on the same port; nginx sends it requests again.
            cluster.restart_on_same_port(index)
            back_at = time.monotonic()
            wait_for(lambda port=port, moment=back_at: load.served_since(port, moment),
                     f"nginx using instance {port} again")
            meanwhile = [outcome for outcome in list(load.outcomes) if stopped_at < outcome.ended < back_at]
            assert meanwhile, "the load went on while the instance restarted"
    finally:
        load.stop()
    problems = [outcome for outcome in load.outcomes if outcome.problem]
    assert not problems, "\n".join(f"{outcome}" for outcome in problems[:20]) + "\n" + cluster.nginx.errors()
    assert {outcome.status for outcome in load.outcomes} == {200}
    assert {outcome.stream for outcome in load.outcomes} == {True, False}
