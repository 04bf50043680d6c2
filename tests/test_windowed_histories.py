"""Mode 2 with the histories real front ends send: windows of the newest messages (NextChat
sends 4 by default, LobeChat a configurable count), regenerated answers, edited turns, JSON
answers, and the user a front end names in a trusted header (USER_HEADER).

A `FrontEnd` keeps the whole transcript, as a chat UI does, and sends the system prompt and a
window of it. What Dify received (which conversation each turn continued, and the query) is
read back from the emulator.
"""

from __future__ import annotations

import base64
import json

import openai
import pydantic
import pytest

from core.response.stages import json_instructions
from tests.conftest import CLIENT_KEY
from tests.scenarios import chat_requests, directive
from tests.test_conversation_memory import EXPECTED_USER, SYSTEM, ZERO_WIDTH, dify_calls, stored_messages

TURNS = 8
QUESTIONS = [f"question {turn}" for turn in range(1, TURNS + 1)]
FIRST_QUERY = "Be brief.\n\nquestion 1"


@pytest.fixture(scope="module")
def every_reply_gateway(start_gateway):
    return start_gateway(CONVERSATION_MEMORY_MODE="2")


@pytest.fixture(scope="module")
def first_reply_gateway(start_gateway):
    return start_gateway(CONVERSATION_MEMORY_MODE="2", ZERO_WIDTH_ID="first")


class FrontEnd:
    """A chat UI: the whole transcript, of which the system prompt and a window are sent."""

    def __init__(self, gateway, window: int | None = None, **request: object) -> None:
        self.client = openai.OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        self.window = window  # how many of the newest messages are sent; None: all
        self.request = request
        self.transcript: list[dict] = []
        self.headers: list[str] = []  # X-Dify-Conversation-Id of each answer

    def ask(self, question: str, **request: object) -> str:
        self.transcript.append({"role": "user", "content": question})
        sent = self.transcript[-self.window:] if self.window else self.transcript
        raw = self.client.chat.completions.with_raw_response.create(
            model="demo-chat", messages=[SYSTEM, *sent], **{**self.request, **request})
        answer = raw.parse().choices[0].message.content
        self.headers.append(raw.headers["X-Dify-Conversation-Id"])
        self.transcript.append({"role": "assistant", "content": answer})
        return answer

    def regenerate(self) -> str:
        """Drop the last answer and ask its question again."""
        self.transcript.pop()
        return self.ask(self.transcript.pop()["content"])

    def edit(self, index: int, question: str) -> str:
        """Edit the user message at `index` of the transcript: everything after it is dropped."""
        del self.transcript[index:]
        return self.ask(question)


def continuing(conversation_id: str, questions: list[str]) -> list[tuple[str, str, str]]:
    return [(question, conversation_id, EXPECTED_USER) for question in questions]


def folded(*turns: tuple[str, str], current: str) -> str:
    """The query of a new conversation that starts with the history (mode 1's format)."""
    blocks = ["System:\nBe brief."]
    for question, answer in turns:
        blocks += [f"User:\n{question}", f"Assistant:\n{answer}"]
    return "\n\n".join([*blocks, f"Current question:\n{current}"])


def said(question: str) -> str:
    return f"You said: {question}"


@pytest.mark.parametrize("window", [4, 2, None], ids=["nextchat-4", "window-2", "full"])
def test_every_reply_keeps_the_conversation_whatever_the_window(every_reply_gateway, recorded, window):
    front_end = FrontEnd(every_reply_gateway, window)
    answers = [front_end.ask(question) for question in QUESTIONS]
    conversation_id = front_end.headers[0]
    assert front_end.headers == [conversation_id] * TURNS
    assert dify_calls(recorded) == [(FIRST_QUERY, "", EXPECTED_USER), *continuing(conversation_id, QUESTIONS[1:])]
    # Every answer carries the id; what is visible is the model's text alone.
    assert all(set(answer) & ZERO_WIDTH for answer in answers)
    assert [answer.rstrip("".join(ZERO_WIDTH)) for answer in answers] == [said(FIRST_QUERY), *map(said, QUESTIONS[1:])]
    assert [message["query"] for message in stored_messages(recorded, conversation_id)] == [FIRST_QUERY,
                                                                                            *QUESTIONS[1:]]


def test_without_any_reply_in_the_window_every_turn_starts_over(every_reply_gateway, recorded):
    front_end = FrontEnd(every_reply_gateway, window=1)
    for question in QUESTIONS[:3]:
        front_end.ask(question)
    assert dify_calls(recorded) == [(f"Be brief.\n\n{question}", "", EXPECTED_USER) for question in QUESTIONS[:3]]
    assert len(set(front_end.headers)) == 3


def test_first_reply_only_restarts_when_the_window_loses_it(first_reply_gateway, recorded):
    """ZERO_WIDTH_ID=first (the original's way) behind NextChat's window of 4: once the id'd
    reply leaves the window a new conversation starts with the window folded in."""
    front_end = FrontEnd(first_reply_gateway, window=4)
    answers = [front_end.ask(question) for question in QUESTIONS]
    first, second, third = front_end.headers[0], front_end.headers[3], front_end.headers[6]
    assert len({first, second, third}) == 3
    assert front_end.headers == [first] * 3 + [second] * 3 + [third] * 2
    assert [bool(set(answer) & ZERO_WIDTH) for answer in answers] == [True, False, False] * 2 + [True, False]
    visible = [answer.rstrip("".join(ZERO_WIDTH)) for answer in answers]
    q = QUESTIONS
    assert dify_calls(recorded) == [
        (FIRST_QUERY, "", EXPECTED_USER), *continuing(first, q[1:3]),
        (folded((q[1], visible[1]), (q[2], visible[2]), current=q[3]).replace(
            f"User:\n{q[1]}\n\n", "", 1), "", EXPECTED_USER),
        *continuing(second, q[4:6]),
        (folded((q[4], visible[4]), (q[5], visible[5]), current=q[6]).replace(
            f"User:\n{q[4]}\n\n", "", 1), "", EXPECTED_USER),
        *continuing(third, q[7:]),
    ]


def test_a_regenerated_answer_starts_a_conversation_without_the_abandoned_one(every_reply_gateway, recorded):
    front_end = FrontEnd(every_reply_gateway)
    answers = [front_end.ask(question) for question in QUESTIONS[:3]]
    abandoned = front_end.headers[0]
    front_end.regenerate()
    for question in QUESTIONS[3:]:
        front_end.ask(question)
    branch = front_end.headers[3]
    assert branch != abandoned and front_end.headers[3:] == [branch] * (1 + len(QUESTIONS[3:]))
    visible = [answer.rstrip("".join(ZERO_WIDTH)) for answer in answers]
    restart = folded((QUESTIONS[0], visible[0]), (QUESTIONS[1], visible[1]), current=QUESTIONS[2])
    assert dify_calls(recorded) == [
        (FIRST_QUERY, "", EXPECTED_USER), *continuing(abandoned, QUESTIONS[1:3]),
        (restart, "", EXPECTED_USER), *continuing(branch, QUESTIONS[3:]),
    ]
    # The new conversation's memory holds the history once, and not the abandoned answer.
    assert [message["query"] for message in stored_messages(recorded, branch)] == [restart, *QUESTIONS[3:]]


def test_an_edited_earlier_message_branches_into_a_new_conversation(every_reply_gateway, recorded):
    front_end = FrontEnd(every_reply_gateway)
    answers = [front_end.ask(question) for question in QUESTIONS[:4]]
    original = front_end.headers[0]
    front_end.edit(2, "question 2, edited")  # the transcript's third message is the second question
    for question in QUESTIONS[4:]:
        front_end.ask(question)
    branch = front_end.headers[4]
    assert branch != original and front_end.headers[4:] == [branch] * (1 + len(QUESTIONS[4:]))
    first_answer = answers[0].rstrip("".join(ZERO_WIDTH))
    restart = folded((QUESTIONS[0], first_answer), current="question 2, edited")
    assert dify_calls(recorded) == [
        (FIRST_QUERY, "", EXPECTED_USER), *continuing(original, QUESTIONS[1:4]),
        (restart, "", EXPECTED_USER), *continuing(branch, QUESTIONS[4:]),
    ]


class City(pydantic.BaseModel):
    city: str
    days: int


JSON_TURN = "weather plan " + directive(answer='Sure: {"city": "Paris", "days": 3}')


def test_json_answers_carry_no_id_and_the_conversation_goes_on(every_reply_gateway, recorded):
    """An answer that must parse (json_object, or a schema through the SDK's `parse`) ends with
    its JSON: no ids after it. The next turns continue from the newest reply that has one."""
    front_end = FrontEnd(every_reply_gateway)
    front_end.ask(QUESTIONS[0])
    answer = front_end.ask(JSON_TURN, response_format={"type": "json_object"})
    assert json.loads(answer) == {"city": "Paris", "days": 3}
    front_end.transcript.append({"role": "user", "content": JSON_TURN})
    parsed = front_end.client.chat.completions.parse(model="demo-chat", response_format=City,
                                                     messages=[SYSTEM, *front_end.transcript])
    assert parsed.choices[0].message.parsed == City(city="Paris", days=3)
    front_end.transcript.append({"role": "assistant", "content": parsed.choices[0].message.content})
    front_end.ask(QUESTIONS[2])
    conversation_id = front_end.headers[0]
    assert front_end.headers == [conversation_id] * 3
    calls = dify_calls(recorded)
    assert [(conversation, user) for _, conversation, user in calls] == [("", EXPECTED_USER)] + [
        (conversation_id, EXPECTED_USER)] * 3
    # The JSON turns' queries are the question and the JSON rule (core/response/stages.py).
    assert [query.split("\n\n")[0] for query, _, _ in calls] == ["Be brief.", JSON_TURN, JSON_TURN, QUESTIONS[2]]
    assert calls[1][0] == f"{JSON_TURN}\n\n{json_instructions({'type': 'json_object'})}"


@pytest.fixture(scope="module")
def open_webui_gateway(start_gateway):
    return start_gateway(CONVERSATION_MEMORY_MODE="2", USER_HEADER="X-OpenWebUI-User-Id")


PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def test_the_trusted_user_header_names_the_dify_user(open_webui_gateway, recorded):
    def front_end(user_id: str | None, **request: object) -> FrontEnd:
        headers = {"X-OpenWebUI-User-Name": "Ann", "X-OpenWebUI-Chat-Id": "chat-1"}
        if user_id:
            headers["X-OpenWebUI-User-Id"] = user_id
        return FrontEnd(open_webui_gateway, extra_headers=headers, **request)

    ann, bob = front_end("user-ann"), front_end("user-bob")
    for question in QUESTIONS[:2]:
        ann.ask(question)
        bob.ask(question)
    front_end(None).ask("no header")
    front_end("user-ann", user="field-user").ask("both")
    picture = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,"
                                                                                           f"{PIXEL}"}}]
    front_end("user-bob").ask(picture)
    users = [call["json"]["user"] for call in chat_requests(recorded)]
    assert users == ["user-ann", "user-bob", "user-ann", "user-bob", EXPECTED_USER, "user-ann", "user-bob"]
    # Each user's conversation is their own, and continues.
    assert [call["json"]["conversation_id"] for call in chat_requests(recorded)][2:4] == [ann.headers[0],
                                                                                          bob.headers[0]]
    uploads = [record["form"]["user"] for record in recorded.requests() if record["path"] == "/v1/files/upload"]
    assert uploads == ["user-bob"]
