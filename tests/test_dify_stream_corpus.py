"""The corpus of public Dify streams (tests/dify_streams/) is well formed and covers what it claims."""

import json
import re

import pytest

from tests.dify_stream_corpus import (
    APP_MODES,
    CORPUS_DIR,
    KINDS,
    REQUIRED_HEADERS,
    TRANSCRIPTS,
    CorpusError,
    all_transcripts,
    load,
    parse_transcript,
)

NAME = re.compile(r"^(\d{4})-[a-z0-9.-]+\.sse$")


def test_there_are_at_least_twenty_transcripts_with_distinct_numbers():
    assert len(TRANSCRIPTS) >= 20
    numbers = [NAME.match(path.name).group(1) for path in TRANSCRIPTS if NAME.match(path.name)]
    assert len(numbers) == len(TRANSCRIPTS), "every file is named NNNN-words.sse"
    assert len(set(numbers)) == len(numbers)


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.name)
def test_transcript_parses_with_every_required_header(path):
    transcript = load(path)
    for key in REQUIRED_HEADERS:
        assert transcript.headers.get(key, "").strip(), f"{key} missing or empty"
    assert transcript.kind in KINDS
    assert transcript.app_mode in APP_MODES
    assert transcript.dify_major in (0, 1), "dify_version names a 0.x or 1.x version"
    assert transcript.body.strip(), "empty body"
    transcript.body.decode("utf-8")
    if transcript.kind.startswith("real run"):
        assert transcript.headers["source"].startswith(("http", "public GitHub")), "a real run says where it came from"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.name)
def test_data_lines_are_json_unless_the_header_says_otherwise(path):
    transcript = load(path)
    failing = set()
    for number, payload in transcript.data_payloads():
        try:
            json.loads(payload)
        except ValueError:
            failing.add(number)
    assert failing == transcript.unparsed_lines
    if failing:
        why = (transcript.headers["edits"] + " " + transcript.headers.get("notes", "")).lower()
        assert any(word in why for word in ("cut", "json", "typo")), "the header explains the broken lines"


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.name)
def test_lines_that_are_not_sse_are_declared(path):
    transcript = load(path)
    stray = {
        number
        for number, line in enumerate(transcript.lines(), 1)
        if line and not line.startswith(("data:", "event:", ":"))
    }
    assert stray == transcript.other_lines


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda path: path.name)
def test_how_the_stream_ends_matches_its_kind(path):
    transcript = load(path)
    ends = transcript.headers["ends"]
    if transcript.kind == "real run, whole":
        assert not ends.startswith("cut off")
        assert transcript.body.endswith(b"\n"), "a whole run ends after a complete line"
    if not transcript.body.endswith(b"\n"):
        assert ends.startswith("cut off"), "an unterminated last line means the transcript was cut"
    if not transcript.events():
        assert ends.startswith("cut off"), "only a cut transcript may hold no readable event"


def test_all_five_app_modes_are_present():
    modes = {transcript.app_mode for transcript in all_transcripts()}
    assert {"chat", "agent-chat", "advanced-chat", "completion", "workflow"} <= modes


def test_dify_0x_and_1x_are_both_present_and_real_runs_dominate():
    transcripts = all_transcripts()
    assert {transcript.dify_major for transcript in transcripts} >= {0, 1}
    real = [transcript for transcript in transcripts if transcript.kind.startswith("real run")]
    assert len(real) > len(transcripts) / 2
    assert any(transcript.kind == "real run, whole" for transcript in transcripts)


def test_readme_lists_every_transcript():
    readme = (CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    for path in TRANSCRIPTS:
        assert f"`{path.name}`" in readme


def test_parser_rejects_a_file_without_separator_or_with_a_bad_header():
    with pytest.raises(CorpusError):
        parse_transcript(b"# source: x\ndata: {}\n")
    with pytest.raises(CorpusError):
        parse_transcript(b"source x\n# ---\ndata: {}\n")
    headers, body = parse_transcript(b"# a: b: c\n# ---\ndata: {}\n\n")
    assert headers == {"a": "b: c"} and body == b"data: {}\n\n"
