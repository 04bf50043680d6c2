"""Knowledge-base citations (message_end.metadata.retriever_resources) as a `citations` field, a
Sources list in the text, or nothing (CITATIONS)."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from core.items import CITATIONS, END, TEXT
from core.response.translate import DifyEventTranslator, citation_from_dify, sources_text
from tests.conftest import CLIENT_KEY
from tests.scenarios import directive
from tests.test_conversation_memory import ZERO_WIDTH

RESOURCES = [
    {"position": 1, "dataset_id": "ds-1", "dataset_name": "Handbook", "document_id": "doc-1",
     "document_name": "leave-policy.pdf", "data_source_type": "upload_file", "segment_id": "seg-1",
     "retriever_from": "api", "score": 0.91, "hit_count": 3, "word_count": 120, "segment_position": 4,
     "index_node_hash": "abc", "content": "Employees get 25 days of paid leave a year.", "page": 2},
    {"position": 2, "dataset_id": "ds-1", "dataset_name": "Handbook", "document_id": "doc-2",
     "document_name": "faq.md", "segment_id": "seg-9", "score": 0.5, "content": "Ask HR. " * 40,
     "page": None, "doc_metadata": None},
]
CITED = [
    {"index": 1, "document": "leave-policy.pdf", "document_id": "doc-1", "dataset": "Handbook", "dataset_id": "ds-1",
     "segment_id": "seg-1", "score": 0.91, "page": 2, "excerpt": "Employees get 25 days of paid leave a year."},
    {"index": 2, "document": "faq.md", "document_id": "doc-2", "dataset": "Handbook", "dataset_id": "ds-1",
     "segment_id": "seg-9", "score": 0.5, "excerpt": "Ask HR. " * 40},
]
SOURCES = ("\n\n**Sources**\n\n1. leave-policy.pdf (Handbook): Employees get 25 days of paid leave a year.\n"
           "2. faq.md (Handbook): " + " ".join(["Ask", "HR."] * 40)[:200].rsplit(" ", 1)[0] + "…")
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}


def message_end(resources) -> dict:
    return {"event": "message_end", "task_id": "t", "metadata": {"retriever_resources": resources, "usage": {}}}


def test_resources_become_citations_without_the_fields_dify_left_empty():
    assert [citation_from_dify(resource) for resource in RESOURCES] == CITED
    assert citation_from_dify({"position": 3, "score": 0.1}) is None  # nothing to show
    assert citation_from_dify("not an object") is None


def test_sources_text_lists_each_segment_with_a_short_excerpt():
    assert sources_text(CITED) == SOURCES
    assert len(SOURCES.splitlines()[-1]) < 240


@pytest.mark.parametrize(("mode", "items"), [
    ("field", [(CITATIONS, CITED)]),
    ("markdown", [(TEXT, SOURCES)]),
    ("off", []),
])
def test_the_translator_places_citations_before_the_end(mode, items):
    translator = DifyEventTranslator("chat", citations=mode)
    assert translator.feed(message_end(RESOURCES)) == [*items, (END, ("stop", {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))]


def test_empty_or_missing_resources_add_nothing():
    for resources in ([], None, [{"score": 1}]):
        assert DifyEventTranslator("chat", citations="field").feed(message_end(resources))[0][0] == END


def ask(gateway, model: str = "demo-chat", stream: bool = False, question: str = "How much leave?", **body):
    text = f"{question} {directive(answer='You get 25 days.', retriever_resources=RESOURCES)}"
    return requests.post(gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30, stream=stream,
                         json={"model": model, "stream": stream, "messages": [{"role": "user", "content": text}],
                               **body})


def stream_chunks(response) -> list[dict]:
    lines = [line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


@pytest.mark.parametrize("model", ["demo-chat", "demo-agent", "demo-chatflow"])
def test_field_citations_on_the_message(gateway, model):
    message = ask(gateway, model).json()["choices"][0]["message"]
    assert message["citations"] == CITED
    assert message["content"] == "You get 25 days."


def test_field_citations_on_the_last_content_chunk_of_a_stream(gateway):
    chunks = stream_chunks(ask(gateway, stream=True))
    *_, cited, finish = chunks
    assert cited["choices"][0]["delta"] == {"content": "", "citations": CITED}
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert sum("citations" in chunk["choices"][0]["delta"] for chunk in chunks) == 1
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks) == "You get 25 days."


def test_the_openai_sdk_keeps_the_citations(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    text = f"How much leave? {directive(answer='You get 25 days.', retriever_resources=RESOURCES)}"
    message = client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": text}]
                                             ).choices[0].message
    assert message.model_extra["citations"] == CITED


@pytest.fixture(scope="module")
def markdown_gateway(start_gateway):
    return start_gateway(CITATIONS="markdown", CONVERSATION_MEMORY_MODE="2",
                         DIFY_API_KEYS="app-demo-chat,app-demo-completion")


@pytest.mark.parametrize("stream", [False, True])
def test_markdown_sources_end_the_text_before_the_conversation_id(markdown_gateway, stream):
    response = ask(markdown_gateway, stream=stream)
    if stream:
        chunks = stream_chunks(response)
        content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
        assert not any("citations" in chunk["choices"][0]["delta"] for chunk in chunks)
    else:
        message = response.json()["choices"][0]["message"]
        content = message["content"]
        assert "citations" not in message
    visible = content.rstrip("".join(ZERO_WIDTH))
    assert visible == "You get 25 days." + SOURCES and content != visible


def test_markdown_sources_stay_out_of_json_answers(markdown_gateway):
    text = "Leave as JSON " + directive(answer='{"days": 25}', retriever_resources=RESOURCES)
    response = requests.post(markdown_gateway.base_url + "/chat/completions", headers=HEADERS, timeout=30, json={
        "model": "demo-chat", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": text}]})
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {"days": 25}


def test_markdown_sources_on_text_completions(markdown_gateway):
    prompt = f"How much leave? {directive(answer='You get 25 days.', retriever_resources=RESOURCES)}"
    response = requests.post(markdown_gateway.base_url + "/completions", headers=HEADERS, timeout=30,
                             json={"model": "demo-completion", "prompt": prompt})
    assert response.json()["choices"][0]["text"] == "You get 25 days." + SOURCES


def test_citations_off(start_gateway):
    gateway = start_gateway(CITATIONS="off")
    message = ask(gateway).json()["choices"][0]["message"]
    assert message["content"] == "You get 25 days." and "citations" not in message
