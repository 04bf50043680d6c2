"""Unit tests: <think> blocks and agent thoughts -> text, reasoning and tool items."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.items import AGENT_TOOL_CALL, AGENT_TOOL_RESULT, REASONING, TEXT, THINK_TAG
from core.response.reasoning import AgentThoughts, ThinkSplitter

DIFY_DETAILS = ('<details style="color:gray;background-color: #f8f8f8;padding: 8px;border-radius: 4px;" open> '
                "<summary> Thinking... </summary>")


def split_run(pieces, keep_tags=False):
    splitter = ThinkSplitter(keep_tags=keep_tags)
    items = []
    for piece in pieces:
        items += splitter.feed(piece)
    return items + splitter.flush()


def merged(items):
    """Adjacent items of one kind joined: how a client sees the stream."""
    out = []
    for kind, text in items:
        assert text, "empty item"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


# --- ThinkSplitter: whole answers -------------------------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    ("<think>\nThe user greets me.\n</think>\n\nHello!",
     [(REASONING, "The user greets me.\n"), (TEXT, "Hello!")]),
    ("\n \n<think>x</think>y", [(REASONING, "x"), (TEXT, "y")]),  # whitespace before a leading <think>
    ("Sure. <think>hmm</think>\n Done.", [(TEXT, "Sure. "), (REASONING, "hmm"), (TEXT, "Done.")]),
    ("<think>a</think>b<think>c</think>d", [(REASONING, "a"), (TEXT, "b"), (REASONING, "c"), (TEXT, "d")]),
    ("<think>\n\n</think>\n\nAnswer", [(TEXT, "Answer")]),  # Qwen3 with thinking off
    ("<think>still thinking", [(REASONING, "still thinking")]),
    ("<think>a <think> b</think>c", [(REASONING, "a <think> b"), (TEXT, "c")]),  # no nesting
    ("  Hi", [(TEXT, "  Hi")]),
    ("\n", [(TEXT, "\n")]),
    ("a <b", [(TEXT, "a <b")]),
    ("x < y and <table> <thin", [(TEXT, "x < y and <table> <thin")]),
    ("</think> stray", [(TEXT, "</think> stray")]),
    ("<think>思考</think>答案 🙂", [(REASONING, "思考"), (TEXT, "答案 🙂")]),
    ("", []),
])
def test_whole_answer(answer, expected):
    assert merged(split_run([answer])) == expected


@pytest.mark.parametrize("answer, expected", [
    (DIFY_DETAILS + "Reasoning here.\n</details>\n\nThe answer.",
     [(REASONING, "Reasoning here.\n"), (TEXT, "The answer.")]),
    ("<details open>\n<summary>Thinking...</summary>r</details>t", [(REASONING, "r"), (TEXT, "t")]),
    ("<details><summary>More</summary>x</details>", [(TEXT, "<details><summary>More</summary>x</details>")]),
    (DIFY_DETAILS + "unterminated", [(REASONING, "unterminated")]),
])
def test_details_wrapper(answer, expected):
    assert split_run([answer]) == expected


def test_unterminated_block_keeps_a_partial_closing_tag_as_reasoning():
    splitter = ThinkSplitter()
    assert splitter.feed("<think>abc</thi") == [(REASONING, "abc")]
    assert splitter.flush() == [(REASONING, "</thi")]


def test_prefix_of_a_tag_is_held_only_until_it_cannot_be_one():
    splitter = ThinkSplitter()
    assert splitter.feed("a <") == [(TEXT, "a ")]
    assert splitter.feed("b") == [(TEXT, "<b")]
    assert splitter.feed(" x <t") == [(TEXT, " x ")]
    assert splitter.feed("able>") == [(TEXT, "<table>")]
    assert splitter.feed("<det") == []
    assert splitter.feed("ails class='y'>") == []
    assert splitter.feed(" <summary>Steps") == [(TEXT, "<details class='y'> <summary>Steps")]
    assert splitter.feed("<") == []
    assert splitter.flush() == [(TEXT, "<")]


def test_tag_split_across_pieces_streams_the_rest_immediately():
    splitter = ThinkSplitter()
    assert splitter.feed("<thi") == []
    assert splitter.feed("nk>Let me") == [(REASONING, "Let me")]
    assert splitter.feed(" see</") == [(REASONING, " see")]
    assert splitter.feed("think>") == []
    assert splitter.feed("\n") == []
    assert splitter.feed("\nIt is") == [(TEXT, "It is")]
    assert splitter.flush() == []


def test_long_details_without_end_is_released_as_text():
    text = "<details " + "x" * 400
    assert ThinkSplitter().feed(text) == [(TEXT, text)]


def test_flush_resets_for_the_next_answer():
    splitter = ThinkSplitter()
    assert splitter.feed("<think>a</") == [(REASONING, "a")]
    assert splitter.flush() == [(REASONING, "</")]
    assert splitter.feed("b") == [(TEXT, "b")]


# --- ThinkSplitter: keep_tags ---------------------------------------------------------------------

def test_keep_tags_emits_tags_as_their_own_text_items():
    assert split_run(["<think>\nabc\n</think>\n\nHi"], keep_tags=True) == [
        (THINK_TAG, "<think>"), (TEXT, "abc\n"), (THINK_TAG, "</think>"), (TEXT, "Hi")]


def test_keep_tags_normalises_the_details_wrapper():
    assert split_run([DIFY_DETAILS + "r</details>t"], keep_tags=True) == [
        (THINK_TAG, "<think>"), (TEXT, "r"), (THINK_TAG, "</think>"), (TEXT, "t")]


def test_keep_tags_unterminated_block_is_text():
    assert split_run(["<think>abc"], keep_tags=True) == [(THINK_TAG, "<think>"), (TEXT, "abc")]


SAMPLES = [
    "<think>\nThe user greets me. 1 < 2.\n</think>\n\nHello <b>there</b>!",
    "Intro <think>mid</think>\n\nafter </details> <",
    DIFY_DETAILS + "Why? </detail </details>\n\nOK",
    "  <think>思考 <thin</think>答案",
]


def splits(text):
    """Every way to cut `text` into 2 and into 3 pieces."""
    for first in range(len(text) + 1):
        yield [text[:first], text[first:]]
        for second in range(first, len(text) + 1):
            yield [text[:first], text[first:second], text[second:]]


@pytest.mark.parametrize("answer", SAMPLES)
def test_every_split_gives_the_same_result(answer):
    whole = merged(split_run([answer]))
    whole_kept = split_run([answer], keep_tags=True)
    for pieces in splits(answer):
        assert merged(split_run(pieces)) == whole, pieces
        kept = split_run(pieces, keep_tags=True)
        assert merged(kept) == merged(whole_kept), pieces
        assert [text for _, text in kept if "think>" in text] == ["<think>", "</think>"], pieces


def cut(text, points):
    bounds = [0, *sorted(points), len(text)]
    return [text[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="<")), st.lists(st.integers(0, 200), max_size=5))
def test_text_without_tags_comes_out_unchanged(text, points):
    items = split_run(cut(text, [point % (len(text) + 1) for point in points]))
    assert merged(items) == ([(TEXT, text)] if text else [])


FRAGMENTS = ["<think>", "</think>", "<thi", "nk>", "</", "<", ">", " ", "\n", "a", "é", "🙂",
             "<details open>", " <summary>", "Thinking...", "</summary>", "</details>", "<detail"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12), st.lists(st.integers(0, 500), max_size=4),
       st.booleans())
def test_random_tag_soup_is_split_invariant(fragments, points, keep_tags):
    answer = "".join(fragments)
    pieces = cut(answer, [point % (len(answer) + 1) for point in points])
    items = split_run(pieces, keep_tags)
    assert merged(items) == merged(split_run([answer], keep_tags))
    if keep_tags:
        assert all(kind in (TEXT, THINK_TAG) for kind, _ in items)


# --- AgentThoughts ---------------------------------------------------------------------------------

def thought(thought_id, position, **fields):
    """An agent_thought event as easy-UI agent apps send it ("" for missing values)."""
    event = {"event": "agent_thought", "conversation_id": "c1", "message_id": "m1", "created_at": 1,
             "task_id": "t1", "id": thought_id, "position": position, "thought": "", "observation": "",
             "tool": "", "tool_labels": {}, "tool_input": "", "message_files": []}
    event.update(fields)
    return event


TIME_INPUT = '{"current_time": {}}'
TIME_OUTPUT = '{"current_time": "2025-01-01 10:00:00"}'

ONE_TOOL = [  # docs/dify.md 4.6, function-calling agent
    thought("T1", 1),
    thought("T1", 1, thought="Let me check the clock.", tool="current_time", tool_input=TIME_INPUT),
    thought("T1", 1, thought="Let me check the clock.", tool="current_time", tool_input=TIME_INPUT,
            observation=TIME_OUTPUT, message_files=["F1"]),
    thought("T2", 2),
    thought("T2", 2, thought="It is 10 am."),
]


def feed_each(mode, events):
    agent = AgentThoughts(mode)
    return [agent.feed(event) for event in events]


def call(call_id, name, arguments):
    return AGENT_TOOL_CALL, {"id": call_id, "name": name, "arguments": arguments}


def result(call_id, name, content):
    return AGENT_TOOL_RESULT, {"id": call_id, "name": name, "content": content}


def test_one_tool_as_reasoning():
    assert feed_each("reasoning", ONE_TOOL) == [
        [],
        [(REASONING, "Let me check the clock.\nCalling tool current_time with {}\n")],
        [(REASONING, "current_time returned: 2025-01-01 10:00:00\n")],
        [],
        [],  # the last iteration's thought is the answer agent_message already streamed
    ]


def test_one_tool_as_tool_calls():
    assert feed_each("tool_calls", ONE_TOOL) == [
        [],
        [call("call_T1_0", "current_time", "{}")],
        [result("call_T1_0", "current_time", "2025-01-01 10:00:00")],
        [],
        [],
    ]


@pytest.mark.parametrize("mode", ["reasoning", "tool_calls"])
def test_repeated_upserts_add_nothing(mode):
    assert feed_each(mode, ONE_TOOL + ONE_TOOL)[5:] == [[]] * 5


TWO_ITERATIONS = [
    thought("T1", 1),
    thought("T1", 1, tool="current_time", tool_input=TIME_INPUT),
    thought("T1", 1, tool="current_time", tool_input=TIME_INPUT, observation=TIME_OUTPUT),
    thought("T2", 2),
    thought("T2", 2, thought="Now the weather", tool="weather", tool_input='{"weather": {"city": "Paris"}}'),
    thought("T2", 2, thought="Now the weather.", tool="weather", tool_input='{"weather": {"city": "Paris"}}',
            observation='{"weather": {"temp": 20, "sky": "clear"}}'),
    thought("T3", 3, thought="10 am, 20 °C and clear."),
]


def test_two_iterations_as_reasoning():
    assert feed_each("reasoning", TWO_ITERATIONS) == [
        [],
        [(REASONING, "Calling tool current_time with {}\n")],
        [(REASONING, "current_time returned: 2025-01-01 10:00:00\n")],
        [],
        [(REASONING, "Now the weather\nCalling tool weather with {\"city\": \"Paris\"}\n")],
        [(REASONING, ".\nweather returned: {\"temp\": 20, \"sky\": \"clear\"}\n")],
        [],
    ]


def test_two_iterations_as_tool_calls():
    assert feed_each("tool_calls", TWO_ITERATIONS) == [
        [],
        [call("call_T1_0", "current_time", "{}")],
        [result("call_T1_0", "current_time", "2025-01-01 10:00:00")],
        [],
        [call("call_T2_0", "weather", '{"city": "Paris"}')],
        [result("call_T2_0", "weather", '{"temp": 20, "sky": "clear"}')],
        [],
    ]


SEVERAL_TOOLS = [
    thought("T1", 1, thought="Both at once.", tool="current_time;weather",
            tool_input='{"current_time": {}, "weather": {"city": "Paris"}}'),
    thought("T1", 1, thought="Both at once.", tool="current_time;weather",
            tool_input='{"current_time": {}, "weather": {"city": "Paris"}}',
            observation='{"weather": "sunny"}'),  # keyed by tool: current_time has no result yet
    thought("T1", 1, thought="Both at once.", tool="current_time;weather",
            tool_input='{"current_time": {}, "weather": {"city": "Paris"}}',
            observation='{"current_time": "10:00", "weather": "sunny"}'),
]


def test_several_tools_as_reasoning():
    assert feed_each("reasoning", SEVERAL_TOOLS) == [
        [(REASONING, "Both at once.\nCalling tool current_time with {}\nCalling tool weather with "
                     '{"city": "Paris"}\n')],
        [(REASONING, "weather returned: sunny\n")],
        [(REASONING, "current_time returned: 10:00\n")],
    ]


def test_several_tools_as_tool_calls():
    assert feed_each("tool_calls", SEVERAL_TOOLS) == [
        [call("call_T1_0", "current_time", "{}"), call("call_T1_1", "weather", '{"city": "Paris"}')],
        [result("call_T1_1", "weather", "sunny")],
        [result("call_T1_0", "current_time", "10:00")],
    ]


INVALID_JSON = [
    thought("T1", 1, tool="search", tool_input="city=Paris"),
    thought("T1", 1, tool="search", tool_input="city=Paris", observation="plain text, not JSON"),
    thought("T2", 2, tool="a;b", tool_input='{"q": 1}', observation="[1, 2]"),  # JSON not keyed by tool
]


def test_invalid_json_as_reasoning():
    assert feed_each("reasoning", INVALID_JSON) == [
        [(REASONING, "Calling tool search with city=Paris\n")],
        [(REASONING, "search returned: plain text, not JSON\n")],
        [(REASONING, 'Calling tool a with {"q": 1}\na returned: [1, 2]\n'
                     'Calling tool b with {"q": 1}\nb returned: [1, 2]\n')],
    ]


def test_invalid_json_as_tool_calls():
    assert feed_each("tool_calls", INVALID_JSON) == [
        [call("call_T1_0", "search", "city=Paris")],
        [result("call_T1_0", "search", "plain text, not JSON")],
        [call("call_T2_0", "a", '{"q": 1}'), result("call_T2_0", "a", "[1, 2]"),
         call("call_T2_1", "b", '{"q": 1}'), result("call_T2_1", "b", "[1, 2]")],
    ]


OBSERVATION_FIRST = [
    thought("T1", 1, thought="Checking.", tool="current_time", tool_input=TIME_INPUT, observation=TIME_OUTPUT),
    thought("T1", 1, thought="Checking.", tool="current_time", tool_input=TIME_INPUT),  # a stale upsert
    thought("T1", 1),
]


def test_observation_first_as_reasoning():
    assert feed_each("reasoning", OBSERVATION_FIRST) == [
        [(REASONING, "Checking.\nCalling tool current_time with {}\ncurrent_time returned: 2025-01-01 10:00:00\n")],
        [],
        [],
    ]


def test_observation_first_as_tool_calls():
    assert feed_each("tool_calls", OBSERVATION_FIRST) == [
        [call("call_T1_0", "current_time", "{}"), result("call_T1_0", "current_time", "2025-01-01 10:00:00")],
        [],
        [],
    ]


@pytest.mark.parametrize("events", [ONE_TOOL, TWO_ITERATIONS, SEVERAL_TOOLS, INVALID_JSON, OBSERVATION_FIRST])
def test_hidden_mode_emits_nothing(events):
    assert feed_each("hidden", events) == [[]] * len(events)


def test_missing_and_null_fields():
    agent = AgentThoughts("tool_calls")
    assert agent.feed({"id": "T1"}) == []
    assert agent.feed({"id": "T1", "thought": None, "tool": None, "tool_input": None, "observation": None}) == []
    assert agent.feed({"id": "T1", "tool": "x;y", "tool_input": '{"x": null}'}) == [
        call("call_T1_0", "x", "{}"), call("call_T1_1", "y", "{}")]
    # A later upsert without the tool name still delivers the observation of the known tool.
    assert agent.feed({"id": "T1", "observation": '{"x": 1}'}) == [result("call_T1_0", "x", "1")]


def test_position_identifies_a_thought_without_id():
    agent = AgentThoughts("tool_calls")
    assert agent.feed({"position": 3, "tool": "x", "tool_input": {"x": {"a": 1}}}) == [
        call("call_3_0", "x", '{"a": 1}')]


def test_thought_text_streams_only_its_continuation():
    agent = AgentThoughts()
    assert agent.feed(thought("T1", 1, thought="I should")) == []  # no tool yet: could be the answer
    assert agent.feed(thought("T1", 1, thought="I should look", tool="x")) == [
        (REASONING, "I should look\nCalling tool x with {}\n")]
    assert agent.feed(thought("T1", 1, thought="I should look it up.", tool="x")) == [(REASONING, " it up.")]
    assert agent.feed(thought("T1", 1, thought="Rewritten.", tool="x")) == []


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError):
        AgentThoughts("verbose")
