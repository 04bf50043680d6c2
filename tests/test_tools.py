"""Unit tests: tool requests, tool instructions, earlier turns, and the streaming call parser."""

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import OpenAIError
from core.items import TEXT, TOOL_CALL
from core.request.tools import (
    ToolRequest,
    ToolSpec,
    call_names,
    parse_tool_request,
    render_tool_call_turn,
    render_tool_result_turn,
    tool_instructions,
)
from core.response.tool_parser import ToolCall, ToolCallParser
from core.tolerant_json import coerce

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "days": {"type": "integer"},
        "metric": {"type": "boolean"},
    },
    "required": ["city", "days"],
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.",
                                            "parameters": WEATHER_SCHEMA}}
NOW = {"type": "function", "function": {"name": "now"}}
REQUEST = parse_tool_request({"tools": [WEATHER, NOW]})
PARIS = ("get_weather", '{"city":"Paris","days":3}')
BLOCK = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'


def normalized(items):
    """Items with adjacent text merged and calls as (name, arguments): ids are random."""
    out = []
    for kind, value in items:
        if kind == TEXT:
            if out and out[-1][0] == TEXT:
                out[-1] = (TEXT, out[-1][1] + value)
            else:
                out.append((TEXT, value))
        else:
            assert kind == TOOL_CALL and isinstance(value, ToolCall)
            out.append((TOOL_CALL, (value.name, value.arguments)))
    return out


def parse(pieces, request=REQUEST):
    parser = ToolCallParser(request)
    items = []
    for piece in pieces:
        items += parser.feed(piece)
    items += parser.flush()
    assert [(call.name, call.arguments) for call in parser.calls] == [
        value for kind, value in normalized(items) if kind == TOOL_CALL]
    return normalized(items)


def text(value):
    return (TEXT, value)


def call(name, arguments):
    return (TOOL_CALL, (name, arguments))


# --- parse_tool_request ------------------------------------------------------------------------


def test_tools_become_specs_with_auto_choice():
    expected = ToolRequest(
        tools=(ToolSpec("get_weather", "Weather forecast.", WEATHER_SCHEMA), ToolSpec("now", "", {})),
        choice="auto", forced_name=None, legacy=False, parallel=True)
    assert expected == REQUEST


def test_no_tools_or_choice_none_offer_nothing():
    assert parse_tool_request({"messages": []}) is None
    assert parse_tool_request({"tools": None, "functions": None, "tool_choice": None}) is None
    assert parse_tool_request({"tools": []}) is None
    assert parse_tool_request({"tools": [WEATHER], "tool_choice": "none"}) is None
    assert parse_tool_request({"functions": [WEATHER["function"]], "function_call": "none"}) is None


def test_required_and_named_choices():
    required = parse_tool_request({"tools": [WEATHER, NOW], "tool_choice": "required"})
    assert required.choice == "required" and len(required.tools) == 2
    named = parse_tool_request({"tools": [WEATHER, NOW],
                                "tool_choice": {"type": "function", "function": {"name": "now"}}})
    assert (named.choice, named.forced_name, [tool.name for tool in named.tools]) == ("named", "now", ["now"])


def allowed(mode, *names, **extra):
    tools = [{"type": "function", "function": {"name": name}} for name in names]
    return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": tools, **extra}}


def test_allowed_tools_choice_offers_only_the_named_functions_with_its_mode():
    # openai-python's ChatCompletionAllowedToolChoiceParam
    required = parse_tool_request({"tools": [WEATHER, NOW], "tool_choice": allowed("required", "get_weather")})
    assert (required.choice, required.forced_name, [tool.name for tool in required.tools]) == (
        "required", None, ["get_weather"])
    auto = parse_tool_request({"tools": [WEATHER, NOW], "tool_choice": allowed("auto", "now", "get_weather")})
    assert (auto.choice, [tool.name for tool in auto.tools]) == ("auto", ["get_weather", "now"])
    bare_name = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function",
                                                                                        "name": "now"}]}}
    assert [tool.name for tool in parse_tool_request({"tools": [WEATHER, NOW], "tool_choice": bare_name}).tools] \
        == ["now"]
    # Nothing allowed: nothing offered (auto); required then cannot be honoured (below).
    assert parse_tool_request({"tools": [WEATHER], "tool_choice": allowed("auto", "other")}) is None
    assert parse_tool_request({"tool_choice": allowed("auto", "now")}) is None


@pytest.mark.parametrize(("choice", "param"), [
    ({"type": "allowed_tools"}, "tool_choice.allowed_tools"),
    (allowed("none", "now"), "tool_choice.allowed_tools.mode"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": "now"}}, "tool_choice.allowed_tools.tools"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": ["now"]}},
     "tool_choice.allowed_tools.tools[0]"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {}}]}},
     "tool_choice.allowed_tools.tools[0].function.name"),
    (allowed("required", "other"), "tool_choice"),
])
def test_malformed_allowed_tools_choices_are_400_naming_the_param(choice, param):
    with pytest.raises(OpenAIError) as raised:
        parse_tool_request({"tools": [WEATHER, NOW], "tool_choice": choice})
    assert (raised.value.status, raised.value.param) == (400, param)


def test_legacy_functions_and_function_call():
    request = parse_tool_request({"functions": [WEATHER["function"], NOW["function"]],
                                  "function_call": {"name": "get_weather"}})
    assert (request.legacy, request.choice, request.forced_name, request.parallel) == (
        True, "named", "get_weather", False)
    assert parse_tool_request({"functions": [NOW["function"]], "function_call": "auto"}).choice == "auto"


def test_tools_win_over_functions_and_extra_fields_are_ignored():
    request = parse_tool_request({
        "tools": [{"type": "function", "function": {"name": "now", "strict": True, "x": 1}, "extra": None}],
        "functions": [WEATHER["function"]], "parallel_tool_calls": False, "tool_choice": "auto"})
    assert [tool.name for tool in request.tools] == ["now"] and not request.legacy and not request.parallel


def test_missing_type_and_null_fields_default():
    request = parse_tool_request({"tools": [{"function": {"name": "f", "description": None, "parameters": None}}]})
    assert request.tools == (ToolSpec("f", "", {}),)


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["now"]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
    ({"tools": [NOW, {"type": "function", "function": {"name": "get weather"}}]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f\n"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
     "tools[0].function.description"),
    ({"tools": [NOW, NOW]}, "tools"),
    ({"tools": [NOW], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [NOW], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [NOW], "tool_choice": "any"}, "tool_choice"),
    ({"tools": [NOW], "tool_choice": 1}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "now"}}}, "tool_choice"),
    ({"functions": "now"}, "functions"),
    ({"functions": [{"name": "a.b"}]}, "functions[0].name"),
    ({"functions": [NOW["function"]], "function_call": {"name": "other"}}, "function_call"),
])
def test_invalid_tool_requests_are_400_naming_the_param(body, param):
    with pytest.raises(OpenAIError) as raised:
        parse_tool_request(body)
    assert (raised.value.status, raised.value.type, raised.value.param) == (400, "invalid_request_error", param)


# --- instructions ------------------------------------------------------------------------------


def test_instructions_list_every_tool_as_a_signature():
    instructions = tool_instructions(REQUEST)
    assert ("- get_weather(city: string, days: integer, metric?: boolean): Weather forecast.\n"
            "  city: City name\n- now()\n") in instructions
    assert '"name": <function-name>, "arguments": <args-json-object>' in instructions
    assert "<tool_call>" in instructions and "</tool_call>" in instructions
    assert "answer normally" in instructions and "several calls" in instructions


@pytest.mark.parametrize(("spec", "text"), [
    ({"type": "string"}, "x: string"),
    ({"type": "integer", "default": 3, "minimum": 1, "maximum": 7}, 'x: integer = 3 {"minimum":1,"maximum":7}'),
    ({"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}, "x: integer | null"),
    ({"type": "string", "enum": ["c", "f"]}, 'x: "c" | "f"'),
    ({"type": "array", "items": {"type": "string"}}, "x: string[]"),
    ({"type": "array", "items": {"type": "array", "items": {"type": "number"}}}, "x: number[][]"),
    ({"type": ["string", "null"]}, "x: string | null"),
    ({"type": "object"}, "x: object"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
     'x: {"type":"object","properties":{"a":{"type":"string"}},"required":["a"]}'),
    ({"type": "array", "items": {"type": "object", "properties": {"a": {"type": "string"}}}},
     'x: {"type":"array","items":{"type":"object","properties":{"a":{"type":"string"}}}}'),
    ({"$ref": "#/$defs/Unit", "description": "the unit"}, 'x: {"$ref":"#/$defs/Unit"}'),
    ({"anyOf": [{"type": "string"}, {"type": "object", "properties": {}}]},
     'x: {"anyOf":[{"type":"string"},{"type":"object","properties":{}}]}'),
    ({"const": "fixed"}, 'x: "fixed"'),
])
def test_a_parameter_is_written_as_its_type_and_what_a_type_cannot_say(spec, text):
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": spec}, "required": ["x"]}}}
    assert f"\n- f({text})\n" in tool_instructions(parse_tool_request({"tools": [tool]}))


def test_definitions_and_odd_roots_keep_their_schema():
    unit = {"type": "object", "properties": {"unit": {"$ref": "#/$defs/Unit"}},
            "$defs": {"Unit": {"type": "string", "enum": ["c", "f"], "title": "Unit"}}}
    tool = {"type": "function", "function": {"name": "f", "parameters": unit}}
    lines = tool_instructions(parse_tool_request({"tools": [tool]})).split("\n")
    assert lines[4] == '  Arguments schema: {"$defs":{"Unit":{"type":"string","enum":["c","f"]}}}'


OPEN_WEBUI_TOOLS = json.loads((Path(__file__).parent / "data" / "open_webui_tools.json").read_text())


def test_a_front_ends_many_tools_cost_few_characters_each():
    """Open WebUI attaches its built-in tools to every turn (tests/data/open_webui_tools.json:
    28 tools shaped like its specs, 14 KB of JSON). Written as signatures they cost 275
    characters a tool; as minified JSON schemas they cost 424."""
    instructions = tool_instructions(parse_tool_request({"tools": OPEN_WEBUI_TOOLS}))
    one = tool_instructions(parse_tool_request({"tools": OPEN_WEBUI_TOOLS[:1]}))
    per_tool = (len(instructions) - len(one)) / (len(OPEN_WEBUI_TOOLS) - 1)
    assert per_tool < 280
    assert all(f"- {tool['function']['name']}(" in instructions for tool in OPEN_WEBUI_TOOLS)
    assert "Parameters" not in instructions and '"title"' not in instructions


def test_instructions_state_the_choice_rule():
    required = tool_instructions(parse_tool_request({"tools": [WEATHER], "tool_choice": "required"}))
    assert "must call at least one function" in required
    named = tool_instructions(parse_tool_request({"tools": [WEATHER, NOW],
                                                  "tool_choice": {"type": "function", "function": {"name": "now"}}}))
    assert "You must call the function now" in named and "get_weather" not in named
    legacy = tool_instructions(parse_tool_request({"functions": [NOW["function"]]}))
    assert "at most one call" in legacy and "answer normally" in legacy


def test_instructions_drop_schema_titles_but_keep_a_property_named_title():
    schema = {"title": "Args", "type": "object", "properties": {"title": {"title": "Title", "type": "string"}}}
    instructions = tool_instructions(ToolRequest((ToolSpec("post", "", schema),), "auto", None, False))
    assert "\n- post(title?: string)\n\n" in instructions and "Title" not in instructions


# --- earlier turns -----------------------------------------------------------------------------


def test_call_turn_uses_the_block_syntax_and_parses_back():
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city":"Paris","days":3}'}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}}]}
    rendered = render_tool_call_turn(message)
    assert rendered == BLOCK + '\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    assert parse([rendered]) == [call(*PARIS), text("\n"), call("now", "{}")]


def test_call_turn_keeps_text_and_legacy_function_call():
    message = {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}],
               "function_call": {"name": "now", "arguments": "not json"}}
    assert render_tool_call_turn(message) == (
        'Let me look.\n<tool_call>\n{"name": "now", "arguments": "not json"}\n</tool_call>')


def test_result_turns():
    tool = {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "Sunny"}
    assert render_tool_result_turn(tool) == '<tool_result name="get_weather" id="call_1">\nSunny\n</tool_result>'
    function = {"role": "function", "name": "now", "content": [{"type": "text", "text": "12:00"},
                                                               {"type": "image_url", "image_url": {"url": "x"}},
                                                               {"type": "text", "text": "UTC"}]}
    assert render_tool_result_turn(function) == '<tool_result name="now">\n12:00\nUTC\n</tool_result>'
    anonymous = {"role": "tool", "tool_call_id": 'a"b', "content": {"temp": 20}}
    assert render_tool_result_turn(anonymous) == '<tool_result id="a&quot;b">\n{"temp":20}\n</tool_result>'


def test_result_turn_finds_the_name_from_the_call():
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_9", "content": "noon"}]
    names = call_names(messages)
    assert names == {"call_9": "now"}
    assert render_tool_result_turn(messages[2], names) == '<tool_result name="now" id="call_9">\nnoon\n</tool_result>'


# --- the parser: whole answers and every split -------------------------------------------------

FENCED_NOT_A_CALL = '```json\n{"city": "Paris"}\n```'
ANSWERS = [
    ("Plain answer, a < b and <b>bold</b>.", [text("Plain answer, a < b and <b>bold</b>.")]),
    ("Sure.\n" + BLOCK + "\nDone.", [text("Sure.\n"), call(*PARIS), text("\nDone.")]),
    ('<tool_call>{"name":"now"}</tool_call><tool_call>{"name":"get_weather","arguments":{"city":"Rome","days":3}}'
     "</tool_call>", [call("now", "{}"), call("get_weather", '{"city":"Rome","days":3}')]),
    ('```json\n{"name": "now", "arguments": {}}\n```', [call("now", "{}")]),
    ('x ```\n{"tool_calls": [{"type": "function", "function": {"name": "now", "arguments": "{}"}}]}``` y',
     [text("x "), call("now", "{}"), text(" y")]),
    ("See " + FENCED_NOT_A_CALL + " ok", [text("See " + FENCED_NOT_A_CALL + " ok")]),
    ("```python\nprint(1)\n```\n`x`", [text("```python\nprint(1)\n```\n`x`")]),
    ('<tool_call>{"name": "delete_all"}</tool_call>!', [text('<tool_call>{"name": "delete_all"}</tool_call>!')]),
    ('<tool_call>{"name": "now"}\n<tool_call>{"name": "now"}</tool_call>', [call("now", "{}"), call("now", "{}")]),
    ("<tool_call>{'name': 'now', 'arguments': {},}", [call("now", "{}")]),
    ("<tool_ca<tool_call>nope</tool_call>", [text("<tool_ca<tool_call>nope</tool_call>")]),
    ("``` ``json\n{}", [text("``` ``json\n{}")]),
    ('A\n```\n\n  [{"name": "now"}]\n```', [text("A\n"), call("now", "{}")]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}\n</tool_', [call(*PARIS)]),
]


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_whole_answer(answer, expected):
    assert parse([answer]) == expected


@pytest.mark.parametrize(("answer", "expected"), ANSWERS)
def test_every_split_gives_the_same_items(answer, expected):
    assert parse(answer) == expected  # one character at a time
    size = len(answer)
    for first in range(size + 1):
        assert parse([answer[:first], answer[first:]]) == expected, first
        for second in range(first, size + 1):
            pieces = [answer[:first], answer[first:second], answer[second:]]
            assert parse(pieces) == expected, (first, second)


def test_ordinary_text_is_not_held_back():
    parser = ToolCallParser(REQUEST)
    assert parser.feed("a < b and ") == [text("a < b and ")]
    assert parser.feed("<b>bold</b> ") == [text("<b>bold</b> ")]
    assert parser.feed("`code` ok") == [text("`code` ok")]
    assert parser.feed("```python\n") == [text("```python\n")]


def test_only_a_possible_tag_or_fence_prefix_is_held():
    parser = ToolCallParser(REQUEST)
    assert parser.feed("x <to") == [text("x ")]
    assert parser.feed("ol") == []
    assert parser.feed("s") == [text("<tools")]
    assert parser.feed("``") == []
    assert parser.feed("`js") == []
    assert parser.feed("x\n") == [text("```jsx\n")]
    assert parser.flush() == []


def test_a_started_block_is_held_until_it_closes():
    parser = ToolCallParser(REQUEST)
    assert parser.feed('ok <tool_call>{"name": "now"') == [text("ok ")]
    assert parser.feed("}</tool_call") == []
    [(kind, value)] = parser.feed(">")
    assert kind == TOOL_CALL and value.name == "now" and parser.calls == [value]


@pytest.mark.parametrize(("answer", "expected"), [
    ('<tool_call>\n{"name": "now", "arguments": {}}', [call("now", "{}")]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}\n</tool_', [call(*PARIS)]),
    ('A\n```json\n{"name": "now", "arguments": {}}\n``', [text("A\n"), call("now", "{}")]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
     [text('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')]),
    ('<tool_call>\n{"name": "now", "arguments":', [text('<tool_call>\n{"name": "now", "arguments":')]),
    ("<tool_call>", [text("<tool_call>")]),
    ("```json", [text("```json")]),
])
def test_unterminated_block_at_flush(answer, expected):
    assert parse([answer]) == expected


def test_call_ids():
    parser = ToolCallParser(REQUEST)
    parser.feed(BLOCK + BLOCK)
    first, second = parser.calls
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", first.id) and first.id != second.id


# --- tolerated shapes and slips ----------------------------------------------------------------


@pytest.mark.parametrize("body", [
    '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}',
    '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
    '{"name": "get_weather", "args": {"city": "Paris", "days": 3}}',
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"days\\": 3}"}',
    '{"tool_calls": [{"id": "x", "type": "function", "function": {"name": "get_weather", '
    '"arguments": "{\\"city\\":\\"Paris\\",\\"days\\":3}"}}]}',
    '{"function_call": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}',
    '{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}',
    '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]',
    '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3,},}',
    '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}',
    '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}}',
    "{'name': 'get_weather', 'arguments': {'city': 'Paris', 'days': 3}}",
    '{"name": "get_weather", "arguments": "{\'city\': \'Paris\', \'days\': 3,}"}',
])
def test_tolerated_shapes_and_slips(body):
    assert parse(["<tool_call>\n" + body + "\n</tool_call>"]) == [call(*PARIS)]
    assert parse(["```json\n" + body + "\n```"]) == [call(*PARIS)]


def test_a_tool_call_block_inside_a_json_fence():
    assert parse(["```json\n" + BLOCK + "\n```"]) == [call(*PARIS)]


def test_python_words_and_raw_newlines():
    answer = '<tool_call>{"name": "get_weather", "arguments": {"city": "A\nB", "days": 1, "metric": True}}</tool_call>'
    assert parse([answer]) == [call("get_weather", '{"city":"A\\nB","days":1,"metric":true}')]
    answer = "<tool_call>{'name': 'now', 'arguments': {'x': None, 'y': False, 'z': 'it\\'s \"q\"'}}</tool_call>"
    assert parse([answer]) == [call("now", '{"x":null,"y":false,"z":"it\'s \\"q\\""}')]


def test_several_calls_in_one_openai_block():
    block = ('<tool_call>{"tool_calls": [{"function": {"name": "now", "arguments": "{}"}}, '
             '{"function": {"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}}]}</tool_call>')
    assert parse([block]) == [call("now", "{}"), call(*PARIS)]


@pytest.mark.parametrize("body", [
    '{"name": "rm", "arguments": {}}',
    '{"tool_calls": [{"function": {"name": "now"}}, {"function": {"name": "rm"}}]}',
    '{"name": "now", "arguments": [1]}',
    '{"name": "now", "arguments": "{oops"}',
    '{"name": 3}',
    '{"tool_calls": []}',
    '{"city": "Paris"}',
    '"now"',
    '{"name": "now", "arguments": {"x": NaN}}',
    '{"name": "now"} and more text',
    '{"name": "now", "arguments": {"x": été}}',
])
def test_invalid_or_unknown_calls_stay_text(body):
    answer = "<tool_call>" + body + "</tool_call>"
    assert parse([answer]) == [text(answer)]
    assert parse(["```json\n" + body + "\n```"]) == [text("```json\n" + body + "\n```")]


def test_named_choice_rejects_other_functions():
    request = parse_tool_request({"tools": [WEATHER, NOW],
                                  "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    answer = '<tool_call>{"name": "now"}</tool_call>'
    assert parse([answer], request) == [text(answer)]


# --- coercion ----------------------------------------------------------------------------------


def test_arguments_are_coerced_to_the_schema():
    answer = ('<tool_call>{"name": "get_weather", "arguments": {"city": 75001, "days": "3", "metric": "TRUE"}}'
              "</tool_call>")
    assert parse([answer]) == [call("get_weather", '{"city":"75001","days":3,"metric":true}')]


@pytest.mark.parametrize(("value", "schema", "expected"), [
    ("3", {"type": "integer"}, 3),
    (3.0, {"type": "integer"}, 3),
    ("-2.5", {"type": "number"}, -2.5),
    ("7", {"type": "number"}, 7),
    ("false", {"type": "boolean"}, False),
    (2.5, {"type": "string"}, "2.5"),
    ("x", {"type": "array", "items": {"type": "string"}}, ["x"]),
    (3, {"type": "array", "items": {"type": "string"}}, ["3"]),
    ('["a", "b"]', {"type": "array"}, ["a", "b"]),
    ("5", {"type": ["integer", "null"]}, 5),
    (None, {"type": ["integer", "null"]}, None),
    ({"inner": {"n": "4", "tags": "a"}, "other": "1"},
     {"properties": {"inner": {"type": "object", "properties": {"n": {"type": "integer"},
                                                                  "tags": {"type": "array"}}}}},
     {"inner": {"n": 4, "tags": ["a"]}, "other": "1"}),
    ({"a": "1"}, {"type": "object", "additionalProperties": {"type": "integer"}}, {"a": 1}),
    # Ambiguous or impossible: left as is.
    ("3.5", {"type": "integer"}, "3.5"),
    ("three", {"type": "integer"}, "three"),
    ("1e999", {"type": "number"}, "1e999"),
    ("yes", {"type": "boolean"}, "yes"),
    (1, {"type": "boolean"}, 1),
    (True, {"type": "string"}, True),
    (True, {"type": "integer"}, True),
    ("5", {"type": ["integer", "string"]}, "5"),
    ("5", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "5"),
    (None, {"type": "array"}, None),
    ("5", {}, "5"),
])
def test_coerce(value, schema, expected):
    result = coerce(value, schema)
    assert result == expected and type(result) is type(expected)


# --- properties --------------------------------------------------------------------------------

PLAIN_TEXT = st.text(alphabet=st.characters(blacklist_characters="<`", blacklist_categories=("Cs",)), max_size=40)
CITY = st.text(max_size=12).filter(lambda city: "tool_call>" not in city)
CUTS = st.lists(st.integers(min_value=0, max_value=400), max_size=4)


@settings(max_examples=100, deadline=None)
@given(before=PLAIN_TEXT, after=PLAIN_TEXT, city=CITY, days=st.integers(), ascii_only=st.booleans(), cuts=CUTS)
def test_round_trip_preserves_text_and_parses_the_call(before, after, city, days, ascii_only, cuts):
    arguments = {"city": city, "days": days}
    block = json.dumps({"name": "get_weather", "arguments": arguments}, ensure_ascii=ascii_only)
    answer = before + "<tool_call>\n" + block + "\n</tool_call>" + after
    bounds = sorted({min(cut, len(answer)) for cut in cuts} | {0, len(answer)})
    items = parse([answer[start:end] for start, end in zip(bounds, bounds[1:], strict=False)])
    expected = [call("get_weather", json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))]
    assert items == [text(before)] * bool(before) + expected + [text(after)] * bool(after)


FRAGMENTS = st.sampled_from(["a", " < ", "<", "<tool_call>", "</tool_call>", "<tool_", "`", "```", "```json\n",
                             "\n", "{", "}", '{"name": "now"}', '"', "json", "python\n", "[", "'"])


@settings(max_examples=100, deadline=None)
@given(fragments=st.lists(FRAGMENTS, max_size=12), cuts=st.lists(st.integers(min_value=0, max_value=200),
                                                                  max_size=3))
def test_splitting_never_changes_the_items_and_text_is_never_lost(fragments, cuts):
    answer = "".join(fragments)
    whole = parse([answer])
    bounds = sorted({min(cut, len(answer)) for cut in cuts} | {0, len(answer)})
    assert parse([answer[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]) == whole
    if not any(kind == TOOL_CALL for kind, _ in whole):
        assert whole == ([text(answer)] if answer else [])
