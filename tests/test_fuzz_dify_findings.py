"""What tests/test_fuzz_dify.py found in the gateway, pinned as unit tests of the pure core."""

from __future__ import annotations

import pytest

from core.items import END, REASONING, REPLACE, TEXT
from core.response.pipeline import OutputPipeline
from core.response.reasoning import ThinkSplitter
from core.response.render import ChoiceCollector
from core.response.stages import JsonAnswer
from core.response.translate import DifyEventTranslator, usage_from_dify

UUID = "45701982-8118-4bc5-8e9b-64562b4555f2"


def collected(items) -> str:
    collector = ChoiceCollector()
    for kind, value in items:
        collector.add(kind, value)
    return collector.text


def test_text_a_stage_holds_is_dropped_with_the_replaced_text():
    """A possible tag prefix ("<thi") was held back and released after message_replace: the
    moderated body became "X<thi", and a stream showed the held text after the replacement."""
    pipeline = OutputPipeline([ThinkSplitter()])
    items = pipeline.process([(TEXT, "ab<thi")])
    items += pipeline.process([(REPLACE, "X")])
    items += pipeline.process([(END, ("stop", None))])
    assert items == [(TEXT, "ab"), (REPLACE, "X"), (END, ("stop", None))]
    assert collected(items) == "X"


def test_a_json_answer_held_whole_is_never_shown_after_a_replacement():
    pipeline = OutputPipeline([ThinkSplitter(), JsonAnswer()])
    items = pipeline.process([(TEXT, '{"flagged": true}'), (REPLACE, "X"), (END, ("stop", None))])
    assert items == [(REPLACE, "X"), (END, ("stop", None))]


def test_a_replacement_closes_an_open_think_block():
    """Text after a replacement was still taken for reasoning of the replaced answer."""
    pipeline = OutputPipeline([ThinkSplitter()])
    items = pipeline.process([(TEXT, "<think>unsafe</th"), (REPLACE, "X"), (TEXT, " more"), (END, ("stop", None))])
    assert items == [(REASONING, "unsafe"), (REPLACE, "X"), (TEXT, " more"), (END, ("stop", None))]
    assert collected(items) == "X more"


@pytest.mark.parametrize("value", [123, ["x"], {"a": 1}, "a\r\nX-Injected: 1", "\u4e2d\u6587", ""])
def test_ids_a_header_cannot_carry_are_not_kept(value):
    """A conversation id went into the X-Dify-Conversation-Id header as is: a newline or a
    character outside Latin-1 made the answer a 500, and in memory mode 2 any non-string did."""
    translator = DifyEventTranslator("chat")
    translator.feed({"event": "message", "answer": "hi", "task_id": "t1", "conversation_id": value,
                     "message_id": value})
    assert translator.task_id == "t1"
    assert translator.conversation_id is None and translator.message_id is None


def test_dify_ids_are_kept():
    translator = DifyEventTranslator("chat")
    translator.feed({"event": "message", "answer": "hi", "task_id": "t1", "conversation_id": UUID, "message_id": "m1"})
    assert (translator.conversation_id, translator.message_id) == (UUID, "m1")


def test_malformed_token_counts_count_zero_instead_of_failing_the_answer():
    """int("many") raised inside the translator: a 500, or a stream cut without [DONE]."""
    usage = {"prompt_tokens": "many", "completion_tokens": [3], "total_tokens": "7"}
    assert usage_from_dify(usage) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 7}
    translator = DifyEventTranslator("chat")
    assert translator.feed({"event": "message_end", "metadata": {"usage": {"prompt_tokens": {}}}}) == [
        (END, ("stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))]
    workflow = DifyEventTranslator("workflow")
    items = workflow.feed({"event": "workflow_finished", "data": {"status": "succeeded", "total_tokens": "many",
                                                                 "outputs": {"answer": "done"}}})
    assert items == [(TEXT, "done"), (END, ("stop", {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}))]
