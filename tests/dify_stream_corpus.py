"""The corpus of public Dify service-API streams in tests/dify_streams/ (see its README.md).

Each transcript is a small header of `# key: value` lines, a `# ---` line, then the stream's
bytes as the source showed them. This module only reads the files; it knows nothing of the
gateway, so tests can replay the bodies through any decoder they like.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "dify_streams"

REQUIRED_HEADERS = ("source", "retrieved", "dify_version", "app_mode", "kind", "edits", "ends")
KINDS = ("real run, whole", "real run, partial", "documented example")
APP_MODES = ("chat", "agent-chat", "advanced-chat", "completion", "workflow", "agent")

SEPARATOR = b"# ---\n"
_NAME = re.compile(r"^\d{4}-[a-z0-9.-]+\.sse$")


class CorpusError(ValueError):
    """A transcript file that does not follow the format."""


def parse_transcript(data: bytes) -> tuple[dict[str, str], bytes]:
    """Split one transcript file into (headers, body bytes).

    The header is every line before the first `# ---` line; each is `# key: value`. The body
    is everything after that line, untouched.
    """
    head, sep, body = data.partition(SEPARATOR)
    if not sep:
        raise CorpusError("no '# ---' line")
    headers: dict[str, str] = {}
    for raw in head.decode("utf-8").splitlines():
        if not raw.startswith("# ") or ": " not in raw:
            raise CorpusError(f"not a header line: {raw!r}")
        key, value = raw[2:].split(": ", 1)
        if key in headers:
            raise CorpusError(f"header {key!r} given twice")
        headers[key] = value
    return headers, body


def _line_numbers(value: str | None) -> frozenset[int]:
    if not value:
        return frozenset()
    return frozenset(int(part) for part in value.split(","))


@dataclass(frozen=True)
class Transcript:
    path: Path
    headers: dict[str, str]
    body: bytes

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def app_mode(self) -> str:
        """The mode word that `app_mode` starts with (the rest may qualify it)."""
        return self.headers["app_mode"].split()[0]

    @property
    def kind(self) -> str:
        return self.headers["kind"]

    @property
    def dify_major(self) -> int | None:
        """0 or 1: the first version number the `dify_version` header names."""
        found = re.search(r"\b([01])\.(?:\d+|x)\b", self.headers["dify_version"])
        return int(found.group(1)) if found else None

    @property
    def unparsed_lines(self) -> frozenset[int]:
        """1-based body lines whose `data:` payload is not JSON (cut or altered at the source)."""
        return _line_numbers(self.headers.get("unparsed_lines"))

    @property
    def other_lines(self) -> frozenset[int]:
        """1-based body lines that are neither `data:`, `event:`, a comment nor blank."""
        return _line_numbers(self.headers.get("other_lines"))

    def lines(self) -> list[str]:
        return self.body.decode("utf-8").split("\n")

    def data_payloads(self) -> list[tuple[int, str]]:
        """(line number, payload) for every `data:` line, one optional space after the colon removed."""
        found = []
        for number, line in enumerate(self.lines(), 1):
            if line.startswith("data:"):
                payload = line[5:]
                found.append((number, payload[1:] if payload.startswith(" ") else payload))
        return found

    def events(self) -> list[dict | str]:
        """The JSON events in order, with "ping" for each `event: ping` line; unparsed lines skipped."""
        out: list[dict | str] = []
        for number, line in enumerate(self.lines(), 1):
            if line.startswith("event:") and line[6:].strip() == "ping":
                out.append("ping")
            elif line.startswith("data:") and number not in self.unparsed_lines:
                payload = line[5:]
                out.append(json.loads(payload[1:] if payload.startswith(" ") else payload))
        return out


def transcript_paths() -> list[Path]:
    return sorted(path for path in CORPUS_DIR.glob("*.sse"))


def load(path: Path) -> Transcript:
    headers, body = parse_transcript(path.read_bytes())
    return Transcript(path, headers, body)


def all_transcripts() -> list[Transcript]:
    return [load(path) for path in transcript_paths()]


TRANSCRIPTS: list[Path] = transcript_paths()
