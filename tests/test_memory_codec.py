"""Unit tests of the conversation-memory text forms: the zero-width id codec (mode 2), the
folded history (mode 1) and the queries of modes 0 and 2. No server involved."""

from __future__ import annotations

import base64
import string
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core.errors import OpenAIError
from core.request.memory_modes import memory_mode, zero_width
from core.request.memory_modes.base import (
    FILES_ONLY_QUERY,
    DifyTurn,
    continuation_query,
    fold_history,
    stateless_query,
)
from core.request.memory_modes.history import HistoryMode
from core.request.memory_modes.stateless import StatelessMode
from core.request.memory_modes.zero_width import (
    MAX_ID_DIGITS,
    FoundConversation,
    ZeroWidthMode,
    decode_id,
    encode_id,
    encode_reply_ids,
    find_conversation,
    without_ids,
)

# --- An independent reference encoder, written from the spec of the original scheme -------
# "base64 of the id; each base64 character's 6-bit value v becomes two octal digits
# (v >> 3) & 7 and v & 7 (for `=`, whose value is taken as 64, only the first digit, i.e. 0);
# digits 0-7 map to U+200B, U+200C, U+200D, U+FEFF, U+2060, U+180E, U+2061, U+2062"

REFERENCE_DIGITS = ("\u200b", "\u200c", "\u200d", "\ufeff", "\u2060", "\u180e", "\u2061", "\u2062")
REFERENCE_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


def reference_encode(conversation_id: str) -> str:
    out = []
    for char in base64.b64encode(conversation_id.encode("utf-8")).decode("ascii"):
        value = 64 if char == "=" else REFERENCE_ALPHABET.index(char)
        out.append(REFERENCE_DIGITS[(value >> 3) & 7])
        if char != "=":
            out.append(REFERENCE_DIGITS[value & 7])
    return "".join(out)


# Literal vectors, computed once with the reference above (and "a" checked by hand:
# "YQ==" -> Y=24 -> 3,0; Q=16 -> 2,0; = -> 0; = -> 0). They pin the encoding itself.
LITERAL_VECTORS = {
    "a": "\ufeff\u200b\u200d\u200b\u200b\u200b",  # YQ== (two pads)
    "ab": "\ufeff\u200b\u200d\u2061\u200c\u200b\u200b",  # YWI= (one pad)
    "abc": "\ufeff\u200b\u200d\u2061\u200c\u200c\u2060\ufeff",  # YWJj (no pad)
    "4f1c2b7e-8d3a-4e5f-9a6b-0c1d2e3f4a5b": (
        "\u200c\u180e\u200b\u2061\ufeff\u200b\u2061\u200c\ufeff\u200b\u2061\ufeff\u200c\u200c\u2060\u200d"
        "\u200c\u180e\u2061\u2061\u200d\u2060\u180e\u180e\u200c\u2061\u200b\u2061\u200d\u200b\u2061\ufeff"
        "\ufeff\u200b\u200d\u200d\u2061\u2060\u2061\u2060\ufeff\u200c\u200d\ufeff\u200d\u180e\u2060\u2061"
        "\u200c\ufeff\u200d\ufeff\u2060\u180e\u2060\u200c\u200c\u180e\u2060\u2061\u200c\u200b\u180e\u180e"
        "\u200c\u2060\u200b\u2061\u200c\u2060\u2061\u200c\ufeff\u200c\u200b\ufeff\u200c\u200c\u2060\u180e"
        "\u200c\u2060\u2061\u2061\ufeff\u200b\u2061\u2060\ufeff\u200b\u200d\ufeff\u200d\u180e\u2060\u200d"
    ),
}

uuids = st.uuids().map(str)
# Ids that are not UUIDs: any printable text (decode_id only returns printable ids), of
# every length modulo 3 so that both kinds of base64 padding occur, and at most 72 bytes
# (MAX_ID_DIGITS: longer ids are not read).
printable_ids = st.text(st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" "),
                        min_size=1, max_size=18)
# Text before an id: anything printable, so it never ends with a zero-width digit.
visible_text = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=40)
trailing_space = st.text(" \t\r\n", max_size=5)


def answer_with_id(text: str, conversation_id: str) -> dict[str, str]:
    return {"role": "assistant", "content": text + reference_encode(conversation_id)}


# --- The zero-width codec --------------------------------------------------------------------

@pytest.mark.parametrize("conversation_id, encoded", LITERAL_VECTORS.items())
def test_literal_vectors_encode_and_decode(conversation_id, encoded):
    assert encode_id(conversation_id) == encoded
    assert decode_id("Hello." + encoded) == conversation_id


def test_reference_encoder_matches_the_literal_vectors():
    assert {key: reference_encode(key) for key in LITERAL_VECTORS} == LITERAL_VECTORS


def test_encoding_is_invisible_and_only_uses_the_eight_digits():
    encoded = encode_id(str(uuid.uuid4()))
    assert set(encoded) <= set(REFERENCE_DIGITS) and len(encoded) == 96  # 48 base64 chars, no padding
    assert encode_id("a").endswith("\u200b\u200b")  # each `=` is a single 0 digit


@given(uuids)
def test_uuid_round_trip_and_original_scheme(conversation_id):
    assert encode_id(conversation_id) == reference_encode(conversation_id)
    assert decode_id(encode_id(conversation_id)) == conversation_id


@given(printable_ids)
@example("a")  # YQ==
@example("ab")  # YWI=
@example("id-1")  # aWQtMQ==
@example("Grüße, 你好")
def test_arbitrary_id_round_trip_and_original_scheme(conversation_id):
    assert encode_id(conversation_id) == reference_encode(conversation_id)
    assert decode_id(encode_id(conversation_id)) == conversation_id


@given(visible_text, st.one_of(uuids, printable_ids), trailing_space)
def test_id_is_decoded_after_visible_text_and_before_trailing_whitespace(text, conversation_id, trailing):
    assert decode_id(text + reference_encode(conversation_id) + trailing) == conversation_id


@given(uuids, st.lists(st.sampled_from(REFERENCE_DIGITS), min_size=1, max_size=9))
def test_zero_width_characters_of_the_text_before_the_id_are_not_part_of_it(conversation_id, noise):
    # The answer text itself may end with zero-width characters (copied text, emoji joiners).
    text = "Done." + "".join(noise)
    assert decode_id(text + reference_encode(conversation_id)) == conversation_id
    assert decode_id(text + reference_encode(conversation_id) + "\n") == conversation_id


def counting_decoder(monkeypatch) -> list[int]:
    """Counts the readings the decoder makes: the length of the digits each one decodes."""
    lengths: list[int] = []
    decode = zero_width._decode_digits

    def counted(digits: str) -> str | None:
        lengths.append(len(digits))
        return decode(digits)

    monkeypatch.setattr(zero_width, "_decode_digits", counted)
    return lengths


def test_reading_the_ids_looks_at_a_bounded_tail_of_a_long_zero_width_run(monkeypatch):
    # Text may end with thousands of zero-width characters (pasted, or sent to stall a
    # worker): the work of reading the ids must not grow with the run.
    lengths = counting_decoder(monkeypatch)
    conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    work = []
    for noise in (2_000, 4_000):
        lengths.clear()
        reply = "Done." + "\u200b" * noise + encode_reply_ids(conversation_id, message_id)
        messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]
        assert find_conversation(messages) == FoundConversation(conversation_id, message_id, 1)
        assert without_ids(messages)[1]["content"] == "Done." + "\u200b" * noise
        assert lengths and max(lengths) <= MAX_ID_DIGITS + 1  # + the digit a trim may have removed
        work.append((len(lengths), sum(lengths)))
    assert work[0] == work[1]  # twice the run, the same readings


def test_a_long_run_without_an_id_reads_nothing(monkeypatch):
    lengths = counting_decoder(monkeypatch)
    text = "x" + "\u200b" * 4_000  # zeros: no reading is printable text
    assert decode_id(text) is None
    assert len(lengths) <= 2 * MAX_ID_DIGITS and max(lengths) <= MAX_ID_DIGITS + 1
    messages = [{"role": "user", "content": "q0"}, {"role": "assistant", "content": text},
                {"role": "user", "content": "q"}]
    assert ZeroWidthMode().prepare(messages) == DifyTurn(
        query=f"User:\nq0\n\nAssistant:\n{text}\n\nCurrent question:\nq")


def js_trim(text: str) -> str:
    """What JavaScript's String.prototype.trim() leaves: it takes U+FEFF for white space."""
    return text.strip(" \t\n\r\v\f\u00a0\u2028\u2029\ufeff")


@given(uuids, uuids, st.sampled_from("3c"), visible_text)
def test_an_id_ending_with_the_digit_3_survives_a_javascript_trim(conversation_id, message_id, last, text):
    # A UUID whose last character is 3 or c ends its encoding with U+FEFF (the digit 3), which
    # JavaScript front ends strip when they trim the reply.
    conversation_id, text = conversation_id[:-1] + last, "Answer: " + text
    reply = js_trim(text + encode_reply_ids(conversation_id, message_id))
    assert not reply.endswith(REFERENCE_DIGITS[3])
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply},
                {"role": "user", "content": "next"}]
    assert find_conversation(messages) == FoundConversation(conversation_id, message_id, 1)
    assert without_ids(messages)[1]["content"] == text
    assert decode_id(js_trim(text + encode_id(conversation_id))) == conversation_id
    assert ZeroWidthMode().prepare(messages).conversation_id == conversation_id


@pytest.mark.parametrize("text", [
    "",
    "No id here.",
    "Word\u200bjoiner inside, nothing at the end",
    "Short run at the end \u200b\u200c\u200d",
    "Too few digits for one byte" + "\u200b" * 5,
    reference_encode("abc") + " then visible text after the id",
])
def test_text_without_a_trailing_id_decodes_to_none(text):
    assert decode_id(text) is None


def test_content_given_as_parts_is_searched():
    conversation_id = str(uuid.uuid4())
    encoded = reference_encode(conversation_id)
    inline = [{"type": "text", "text": "Here"}, {"type": "text", "text": "you go." + encoded}]
    own_part = [{"type": "text", "text": "Here you go."}, {"type": "text", "text": encoded}]
    for content in (inline, own_part):
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content},
                    {"role": "user", "content": "next"}]
        assert find_conversation(messages) == FoundConversation(conversation_id, None, 1)
        assert ZeroWidthMode().prepare(messages) == DifyTurn(query="next", conversation_id=conversation_id,
                                                             files_from=2)


def test_newest_assistant_message_with_an_id_wins():
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        answer_with_id("a1", first),
        {"role": "user", "content": "q2"},
        answer_with_id("a2", second),
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3 (no id: ZERO_WIDTH_ID=first, or a JSON answer)"},
        {"role": "user", "content": "q4"},
    ]
    assert find_conversation(messages) == FoundConversation(second, None, 4)
    # Dify already holds every turn up to the newest reply: only the new question goes.
    # Files go along from the messages after the newest reply only.
    assert ZeroWidthMode().prepare(messages) == DifyTurn(query="q4", conversation_id=second, files_from=7)


def test_ids_in_user_messages_are_ignored():
    pasted = "pasted" + reference_encode(str(uuid.uuid4()))
    messages = [{"role": "user", "content": pasted}]
    assert find_conversation(messages) is None
    assert ZeroWidthMode().prepare(messages) == DifyTurn(query=pasted)


def test_readings_that_are_not_uuids_are_not_conversation_ids():
    # Dify's conversation ids are UUIDs; it refuses others with a 400 (not a 404), which
    # would break every later turn of the chat.
    messages = [{"role": "user", "content": "q1"}, answer_with_id("a1", "not-a-uuid"),
                {"role": "user", "content": "q2"}]
    assert decode_id(messages[1]["content"]) == "not-a-uuid"
    assert find_conversation(messages) is None
    assert ZeroWidthMode().prepare(messages) == DifyTurn(query="User:\nq1\n\nAssistant:\na1\n\nCurrent question:\nq2")
    older = str(uuid.uuid4())
    messages[:0] = [{"role": "user", "content": "q0"}, answer_with_id("a0", older)]
    assert find_conversation(messages) == FoundConversation(older, None, 1)


def test_zero_width_mode_turns():
    mode = ZeroWidthMode()
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q1"}]
    assert mode.prepare(first) == DifyTurn(query="Be brief.\n\nq1", files_from=1)
    # A history without an id (started in another mode or gateway) starts over, folded.
    foreign = [*first, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert mode.prepare(foreign) == DifyTurn(
        query="System:\nBe brief.\n\nUser:\nq1\n\nAssistant:\na1\n\nCurrent question:\nq2")
    assert mode.recover(foreign) == mode.prepare(foreign)
    new_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    both = reference_encode(message_id) + "\u2063" + reference_encode(new_id)
    assert mode.reply_suffix(new_id, message_id, None) == both
    assert mode.reply_suffix(new_id, message_id, new_id) == both  # ZERO_WIDTH_ID=every: on every reply
    assert mode.reply_suffix(new_id, None, None) == reference_encode(new_id)
    assert mode.reply_suffix(None, None, None) == ""
    first_only = ZeroWidthMode(every_reply=False)
    assert first_only.reply_suffix(new_id, message_id, None) == both
    assert first_only.reply_suffix(new_id, message_id, new_id) == ""


def test_starting_over_folds_the_history_without_the_ids():
    stale, older = str(uuid.uuid4()), str(uuid.uuid4())
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": [{"type": "text", "text": "a1\u200b" + reference_encode(older) + "\n"}]},
        {"role": "user", "content": "q2"},
        answer_with_id("a2", stale),
        {"role": "user", "content": "q3"},
    ]
    # Dify no longer knows `stale`: the new conversation gets the words, not the bookkeeping
    # (the zero-width character that belongs to the text stays).
    assert ZeroWidthMode().recover(messages) == DifyTurn(
        query="User:\nq1\n\nAssistant:\na1\u200b\n\nUser:\nq2\n\nAssistant:\na2\n\nCurrent question:\nq3")
    assert messages[3]["content"] == "a2" + reference_encode(stale)  # the request itself is untouched


def test_mode_2_for_apps_without_conversations_folds_the_history_without_the_ids():
    conversation_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    messages = [{"role": "user", "content": "q1"},
                {"role": "assistant", "content": "a1" + encode_reply_ids(conversation_id, message_id)},
                {"role": "user", "content": "q2"}]
    folded = "User:\nq1\n\nAssistant:\na1\n\nCurrent question:\nq2"
    mode = memory_mode(2, conversations=False)
    assert mode.prepare(messages) == mode.recover(messages) == DifyTurn(query=folded)
    assert mode.reply_suffix(conversation_id, message_id, None) == ""


def test_memory_mode_numbers():
    assert [type(memory_mode(number)) for number in (0, 1, 2)] == [StatelessMode, HistoryMode, ZeroWidthMode]
    assert all(memory_mode(number).reply_suffix("x", "y", None) == "" for number in (0, 1))
    assert type(memory_mode(2, conversations=False)) is HistoryMode
    assert memory_mode(2).every_reply and not memory_mode(2, every_reply=False).every_reply


def reference_decode_trailing_run(text: str) -> str:
    """What the original OpenDify reads: the trailing run of the eight digits, decoded."""
    run = ""
    for char in reversed(text):
        if char not in REFERENCE_DIGITS:
            break
        run = char + run
    digits = [REFERENCE_DIGITS.index(char) for char in run]
    padding = {0: 0, 7: 1, 6: 2}[len(digits) % 8]
    paired = digits[:len(digits) - padding]
    chars = [REFERENCE_ALPHABET[paired[i] * 8 + paired[i + 1]] for i in range(0, len(paired), 2)]
    return base64.b64decode("".join(chars) + "=" * padding).decode()


@given(conversation_id=uuids, message_id=uuids, text=visible_text)
def test_reply_ids_carry_the_message_id_before_the_conversation_id(conversation_id, message_id, text):
    reply = text + encode_reply_ids(conversation_id, message_id)
    assert reply == text + reference_encode(message_id) + "\u2063" + reference_encode(conversation_id)
    assert reference_decode_trailing_run(reply) == conversation_id  # the original still reads it
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": reply}]
    assert find_conversation(messages) == FoundConversation(conversation_id, message_id, 1)
    assert without_ids(messages)[1]["content"] == text


def test_a_separator_without_a_message_id_before_it_is_text():
    conversation_id = str(uuid.uuid4())
    reply = "a\u2063" + reference_encode(conversation_id)
    messages = [{"role": "assistant", "content": reply}, {"role": "user", "content": "q"}]
    assert find_conversation(messages) == FoundConversation(conversation_id, None, 0)
    assert without_ids(messages)[0]["content"] == "a\u2063"


def test_the_turn_expects_dify_to_end_where_the_history_ends():
    conversation_id, first, second = (str(uuid.uuid4()) for _ in range(3))
    history = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1" + encode_reply_ids(conversation_id, first)},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2" + encode_reply_ids(conversation_id, second)},
        {"role": "user", "content": "q3"},
    ]
    assert ZeroWidthMode().prepare(history).expected_tail == (second, 0)
    # JSON answers carry no ids: Dify holds as many messages after the newest id as they are.
    history[3:4] = [{"role": "assistant", "content": '{"a": 1}'}, {"role": "user", "content": "q2b"},
                    {"role": "assistant", "content": '{"a": 2}'}]
    assert ZeroWidthMode().prepare(history).expected_tail == (first, 2)
    # An id written before message ids were: nothing to check.
    assert ZeroWidthMode().prepare([answer_with_id("a", conversation_id), history[-1]]).expected_tail is None


# --- Mode 1: the folded history ---------------------------------------------------------------

FULL_HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
    {"role": "user", "content": [
        {"type": "text", "text": "What is on"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "this picture?"},
    ]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18 C, sunny"}]},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    {"role": "assistant", "content": "18 C and sunny at 14:05.", "function_call": {"name": "log", "arguments": "{}"}},
    {"role": "function", "name": "log", "content": "ok"},
    {"role": "user", "content": "Thanks! And tomorrow?"},
]

FULL_HISTORY_FOLDED = (
    "System:\nYou are terse.\n\nAnswer in English.\n\n"
    "User:\nWhat is on\nthis picture?\n\n"
    "Assistant:\nA cat.\n\n"
    "User:\nWeather in Paris?\n\n"
    'Assistant:\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n\n'
    '<tool_result name="get_weather" id="call_1">\n18 C, sunny\n</tool_result>\n\n'
    '<tool_result name="get_time" id="call_2">\n14:05\n</tool_result>\n\n'
    'Assistant:\n18 C and sunny at 14:05.\n<tool_call>\n{"name": "log", "arguments": {}}\n</tool_call>\n\n'
    '<tool_result name="log">\nok\n</tool_result>\n\n'
    "Current question:\nThanks! And tomorrow?"
)


def test_fold_history_format():
    folded = fold_history(FULL_HISTORY)
    assert folded == FULL_HISTORY_FOLDED
    assert "{'" not in folded and "[{" not in folded  # never a Python repr of the parts
    assert HistoryMode().prepare(FULL_HISTORY) == DifyTurn(query=FULL_HISTORY_FOLDED)
    assert HistoryMode().recover(FULL_HISTORY) == DifyTurn(query=FULL_HISTORY_FOLDED)


def test_history_mode_sends_a_first_turn_as_mode_0():
    first = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert HistoryMode().prepare(first) == DifyTurn(query="S\n\nhi")


def test_fold_history_of_a_single_question():
    assert fold_history([{"role": "user", "content": "hi"}]) == "Current question:\nhi"
    assert fold_history([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]) == (
        "System:\nS\n\nCurrent question:\nhi")


def test_fold_history_puts_the_current_turns_tool_results_after_the_question():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
    ]
    assert fold_history(messages) == (
        'Current question:\nWeather?\n\nAssistant:\n<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call>'
        '\n\n<tool_result name="weather" id="c1">\nrain\n</tool_result>')


def test_fold_history_writes_object_arguments_as_json():
    # Some clients send `arguments` as an object instead of a JSON string.
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"},
        {"role": "user", "content": "Umbrella?"},
    ]
    assert fold_history(messages) == (
        'User:\nWeather?\n\nAssistant:\n<tool_call>\n{"name": "weather", "arguments": {"city": "Zürich"}}\n'
        '</tool_call>\n\n<tool_result name="weather" id="c1">\nrain\n</tool_result>\n\nCurrent question:\nUmbrella?')


def test_fold_history_needs_a_user_question():
    with pytest.raises(OpenAIError) as caught:
        fold_history([{"role": "system", "content": "S"}, {"role": "assistant", "content": "a"}])
    assert caught.value.status == 400 and caught.value.param == "messages"


# --- Mode 0 and continuation queries ----------------------------------------------------------

def test_stateless_query():
    assert stateless_query(FULL_HISTORY) == "You are terse.\n\nAnswer in English.\n\nThanks! And tomorrow?"
    assert stateless_query([{"role": "user", "content": "  hi  "}]) == "hi"
    assert StatelessMode().prepare(FULL_HISTORY) == DifyTurn(query=stateless_query(FULL_HISTORY),
                                                             files_from=len(FULL_HISTORY) - 1)
    parts = [{"type": "text", "text": "new"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "question"}]
    assert stateless_query([{"role": "user", "content": parts}]) == "new\nquestion"


@pytest.mark.parametrize("messages", [
    [{"role": "system", "content": "only a system prompt"}],
    [{"role": "user", "content": [{"type": "text", "text": " "}]}],
    [{"role": "user", "content": "   "}],
])
def test_stateless_query_needs_user_text(messages):
    with pytest.raises(OpenAIError) as caught:
        stateless_query(messages)
    assert caught.value.status == 400 and caught.value.code == "invalid_value"


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}
PDF_PART = {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERg=="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}


@pytest.mark.parametrize(("mode", "files_from"), [(StatelessMode(), 1), (HistoryMode(), 0), (ZeroWidthMode(), 1)],
                         ids=["0", "1", "2"])
@pytest.mark.parametrize(("parts", "query"), [
    ([IMAGE], FILES_ONLY_QUERY[0]), ([PDF_PART], FILES_ONLY_QUERY[0]), ([AUDIO], FILES_ONLY_QUERY[0]),
    ([{"type": "text", "text": "  "}, IMAGE, AUDIO], FILES_ONLY_QUERY[1]),
])
def test_a_user_turn_of_files_alone_gets_a_placeholder_query(mode, files_from, parts, query):
    # Dify refuses an empty query; the files go with the turn.
    turn = mode.prepare([{"role": "system", "content": "S"}, {"role": "user", "content": parts}])
    assert turn == DifyTurn(query=f"S\n\n{query}", files_from=files_from)
    folded = fold_history([{"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "A cat."},
                           {"role": "user", "content": parts}])
    assert folded == f"User:\n{FILES_ONLY_QUERY[0]}\n\nAssistant:\nA cat.\n\nCurrent question:\n{query}"
    continued = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                 {"role": "user", "content": parts}]
    assert continuation_query(continued) == query


def test_continuation_query_is_the_new_user_text_alone():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": [{"type": "text", "text": "q2"}, {"type": "text", "text": "more"}]},
    ]
    assert continuation_query(messages) == "q2\nmore"


def test_continuation_query_folds_several_new_turns():
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2 (its answer failed)"},
        {"role": "user", "content": "q3"},
    ]
    assert continuation_query(messages) == "User:\nq2 (its answer failed)\n\nCurrent question:\nq3"


def test_continuation_query_sends_tool_results_answering_the_newest_reply():
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    ]
    # Not "Weather in Paris?" again: Dify's conversation already has that question.
    assert continuation_query(messages) == '<tool_result name="weather" id="c1">\n18 C\n</tool_result>'
    messages.append({"role": "tool", "tool_call_id": "c2", "content": "14:05"})
    assert continuation_query(messages) == ('<tool_result name="weather" id="c1">\n18 C\n</tool_result>\n\n'
                                            '<tool_result id="c2">\n14:05\n</tool_result>')
