"""The generation endpoints (`/chat-messages`, `/completion-messages`,
`/workflows/run`) and the stop endpoints: validation in Dify's order, then a
blocking body or an SSE stream."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request

from .apps import CHAT_MODES, App
from .errors import (
    DifyError,
    app_unavailable,
    bad_request,
    invalid_param,
    json_response,
    named_http_error,
    not_chat_app,
    not_found,
    not_workflow_app,
    too_many_requests,
)
from .runner import StreamRunner, abort_connection, wait_blocking
from .scenario import Scenario, answer_deltas, build_scenario, extract_directives
from .store import Conversation, LiveTask, Message, State
from .streams import AgentPlan, ChatflowPlan, ChatPlan, RunContext, WorkflowPlan, final_answer, make_plan
from .validation import Payload, check_inputs, check_payload, read_json_body, require_user, resolve_files


def chat_messages(state: State, app: App) -> Response:
    """POST /v1/chat-messages (chat, agent-chat, advanced-chat, agent)."""
    body = read_json_body()
    user = require_user(body)
    if app.mode not in CHAT_MODES:
        raise not_chat_app()
    payload = check_payload(body, app.profile, "ChatRequestPayload", chat=True)
    if app.mode == "agent":
        # New Agent streams only, and streams when response_mode is omitted (docs/dify.md 4.1).
        if body.get("response_mode") == "blocking":
            raise bad_request("Agent App only supports streaming response mode.")
        payload.response_mode = "streaming"
    clean_query, directive = extract_directives(payload.query)
    scenario = _scenario(app, directive)
    conversation = None
    if payload.conversation_id:
        conversation = state.find_conversation(app.key, user, payload.conversation_id)
        if conversation is None:
            raise not_found()
    streaming = payload.response_mode == "streaming"

    def prepare() -> RunContext:
        if app.mode == "agent-chat" and not streaming:
            raise invalid_param("Agent Chat App does not support blocking mode")
        if not payload.query:
            raise invalid_param("query is required")
        _check_pre_run(app, scenario, streaming)
        check_inputs(app, payload.inputs)
        files = resolve_files(state, app, user, payload.files)
        target = conversation or _new_conversation(state, app, user, clean_query, payload)
        text = clean_query.strip()
        ctx = _context(state, app, scenario, user, payload.query, payload.inputs, "You said: " + text, text, files)
        ctx.conversation_id = target.id
        target.messages.append(Message(ctx.message_id, target.id, payload.query, payload.inputs, files, ctx.created_at))
        target.updated_at = ctx.created_at
        ctx.dialogue_count = len(target.messages)
        return ctx

    return _generate(state, app, streaming, prepare)


def completion_messages(state: State, app: App) -> Response:
    """POST /v1/completion-messages (completion apps)."""
    body = read_json_body()
    user = require_user(body)
    if app.mode != "completion":
        raise app_unavailable()
    payload = check_payload(body, app.profile, "CompletionRequestPayload", query=True)
    clean_query, clean_inputs, directive = _scan([payload.query], payload.inputs)
    scenario = _scenario(app, directive)

    def prepare() -> RunContext:
        _check_pre_run(app, scenario, False)
        check_inputs(app, payload.inputs)
        files = resolve_files(state, app, user, payload.files)
        source = clean_inputs.get("query")
        if not isinstance(source, str):
            source = next((v for v in clean_inputs.values() if isinstance(v, str)), clean_query[0])
        text = source.strip()
        return _context(state, app, scenario, user, payload.query, payload.inputs, "You said: " + text, text, files)

    return _generate(state, app, payload.response_mode == "streaming", prepare)


def workflows_run(state: State, app: App) -> Response:
    """POST /v1/workflows/run (workflow apps)."""
    body = read_json_body()
    user = require_user(body)
    if app.mode != "workflow":
        raise not_workflow_app()
    payload = check_payload(body, app.profile, "WorkflowRunPayload")
    _, clean_inputs, directive = _scan([], payload.inputs)
    scenario = _scenario(app, directive)
    streaming = payload.response_mode == "streaming"

    def prepare() -> RunContext:
        _check_pre_run(app, scenario, streaming)
        check_inputs(app, payload.inputs)
        files = resolve_files(state, app, user, payload.files)
        text = _workflow_text(app, clean_inputs).strip()
        return _context(state, app, scenario, user, "", payload.inputs, "You said: " + text, text, files)

    return _generate(state, app, streaming, prepare)


def stop_task(state: State, app: App, kind: str, task_id: str) -> Response:
    """The three stop routes: always 200 success; a live task of this app (and user, except
    for workflows) is flagged and its stream ends with Dify's stopped terminal events."""
    body = read_json_body()
    user = require_user(body)
    if kind == "chat" and app.mode not in CHAT_MODES:
        raise not_chat_app()
    if kind == "completion" and app.mode != "completion":
        raise app_unavailable()
    if kind == "workflow" and app.mode != "workflow":
        raise not_workflow_app()
    state.request_stop(request.path, app.key, task_id, user, check_user=kind != "workflow")
    return json_response({"result": "success"})


# -- shared steps ----------------------------------------------------------------------


def _scenario(app: App, directive: dict[str, Any] | None) -> Scenario:
    try:
        scenario = build_scenario(app.default_scenario, directive)
    except ValueError as exc:
        raise invalid_param(str(exc)) from None
    if scenario.http_error is not None:
        raise named_http_error(scenario.http_error, app.id, app.concurrency_error)
    return scenario


def _check_pre_run(app: App, scenario: Scenario, streaming: bool) -> None:
    """`pre_run_failure`: the run fails before it starts. Dify >= 1.15 streams a chatflow's or
    workflow's failure as a synthetic workflow_started + workflow_finished(failed) pair (the
    runner sends it, docs/dify.md 4.6); everywhere else (blocking calls, servers before 1.13,
    the easy-UI apps) it is an ordinary HTTP 400, before any conversation or message exists."""
    message = scenario.pre_run_failure
    if message is None:
        return
    order = scenario.chatflow_order or app.chatflow_order
    if not (streaming and app.mode in ("advanced-chat", "workflow") and order != "pre113"):
        raise invalid_param(message)


def _scan(texts: list[str], inputs: dict[str, Any]) -> tuple[list[str], dict[str, Any], dict[str, Any] | None]:
    """Remove directives from the texts and string inputs; the last one found wins."""
    directive = None
    clean_texts = []
    for text in texts:
        cleaned, found = extract_directives(text)
        clean_texts.append(cleaned)
        directive = found or directive
    clean_inputs = {}
    for key, value in inputs.items():
        if isinstance(value, str):
            value, found = extract_directives(value)
            directive = found or directive
        clean_inputs[key] = value
    return clean_texts, clean_inputs, directive


def _workflow_text(app: App, inputs: dict[str, Any]) -> str:
    """The first required text/paragraph input, else the first string input."""
    for kind, settings in app.form_variables():
        value = inputs.get(settings.get("variable", ""))
        if kind in ("text-input", "paragraph") and settings.get("required") and isinstance(value, str):
            return value
    return next((v for v in inputs.values() if isinstance(v, str)), "")


def _new_conversation(state: State, app: App, user: str, query: str, payload: Payload) -> Conversation:
    name = "New conversation"
    if payload.auto_generate_name and query.strip():
        text = query.strip()
        name = text[:20] + ("..." if len(text) > 20 else "")
    return state.create_conversation(app.key, user, name, payload.inputs)


def _context(
    state: State,
    app: App,
    scenario: Scenario,
    user: str,
    query: str,
    inputs: dict[str, Any],
    default_answer: str,
    prompt: str,
    files: list[dict[str, Any]],
) -> RunContext:
    return RunContext(
        app=app,
        scenario=scenario,
        user=user,
        end_user_id=state.end_user_id(app.key, user),
        query=query,
        inputs=inputs,
        deltas=answer_deltas(scenario, default_answer, prompt),
        prompt_tokens=len(prompt.split()),
        files=files,
    )


def _generate(state: State, app: App, streaming: bool, prepare: Callable[[], RunContext]) -> Response:
    """Take a concurrency slot (Dify does so before generation-time checks), run, release."""
    if not state.acquire_slot(app.key, app.max_active_requests):
        raise too_many_requests(app.id, app.max_active_requests, app.concurrency_error)
    handed_over = False
    try:
        ctx = prepare()
        if streaming:
            response = _stream(state, ctx)
            handed_over = True
            return response
        return _blocking(state, ctx)
    finally:
        if not handed_over:
            state.release_slot(app.key)


def _find_message(state: State, ctx: RunContext) -> Message | None:
    conversation = state.conversations.get(ctx.conversation_id)
    if conversation is None:
        return None
    return next((m for m in reversed(conversation.messages) if m.id == ctx.message_id), None)


def _store_answer(state: State, ctx: RunContext, sent: list[str], status: str, error: str | None) -> None:
    message = _find_message(state, ctx)
    if message is None:
        return
    message.answer = final_answer(ctx, sent)
    message.answer_tokens = len(sent)
    message.message_tokens = ctx.prompt_tokens
    failed = status in ("error", "failed")
    message.status = "error" if failed else "paused" if status == "paused" else "normal"
    message.error = (error or ctx.scenario.workflow_error) if failed else None


def _stream(state: State, ctx: RunContext) -> Response:
    plan = make_plan(ctx)
    task = LiveTask(ctx.task_id, ctx.app.key, ctx.user, ctx.app.mode)
    sock = request.environ.get("gunicorn.socket")

    def on_finish(runner: StreamRunner) -> None:
        if runner.started:
            state.stream_finished(task.task_id)
        state.release_slot(ctx.app.key)
        _store_answer(state, ctx, runner.sent, runner.status, runner.error)
        message = _find_message(state, ctx)
        if message is not None and isinstance(plan, AgentPlan):
            message.agent_thoughts = plan.thoughts

    runner = StreamRunner(ctx, plan, task, sock, on_start=lambda: state.stream_started(task), on_finish=on_finish)
    response = Response(runner.iterate(), mimetype="text/event-stream")
    response.call_on_close(runner.finish)
    return response


def _blocking(state: State, ctx: RunContext) -> Response:
    """Blocking mode: the whole answer at once, after the scenario's total delay.

    Connection faults (reset, close, endless waits) apply to blocking calls too,
    so gateways can test their upstream timeouts and error handling.
    """
    scenario = ctx.scenario
    sock = request.environ.get("gunicorn.socket")
    sent = list(ctx.deltas)
    if scenario.reset_before_headers or scenario.reset_after is not None:
        return _aborted(sock)
    if scenario.close_after is not None:
        return _aborted(sock, graceful=True)
    wait = (scenario.first_delay_ms + scenario.delay_ms * len(sent)) / 1000
    if scenario.pause_after is not None:
        wait += scenario.pause_s
    if scenario.stall_after is not None or scenario.never_end:
        wait = float("inf") if scenario.stall_s is None or scenario.never_end else wait + scenario.stall_s
    if wait and not wait_blocking(wait, sock):
        return _aborted(sock)
    mode = ctx.app.mode
    if scenario.error_after is not None:
        sent = sent[: scenario.error_after]
        if mode == "workflow":
            return _blocking_response(ctx, WorkflowPlan(ctx).blocking_body(sent, "failed", scenario.error_message))
        _store_answer(state, ctx, sent, "error", scenario.error_message)
        if mode == "advanced-chat":
            raise invalid_param(f"Run failed: {scenario.error_message}")
        raise DifyError(scenario.error_status, scenario.error_code, scenario.error_message)
    if scenario.pause_for_input is not None and mode in ("advanced-chat", "workflow"):
        if mode == "workflow":
            return _blocking_response(ctx, WorkflowPlan(ctx).blocking_body(sent, "paused", None))
        _store_answer(state, ctx, sent, "paused", None)
        return _blocking_response(ctx, ChatflowPlan(ctx).paused_blocking_body(sent))
    status = scenario.workflow_status or "succeeded"
    if mode == "workflow":
        error = scenario.workflow_error if status == "failed" else None
        return _blocking_response(ctx, WorkflowPlan(ctx).blocking_body(sent, status, error))
    if mode == "advanced-chat" and status == "failed":
        _store_answer(state, ctx, sent, "error", scenario.workflow_error)
        raise invalid_param(f"Run failed: {scenario.workflow_error}")
    _store_answer(state, ctx, sent, "normal", None)
    plan = ChatflowPlan(ctx) if mode == "advanced-chat" else ChatPlan(ctx)
    return _blocking_response(ctx, plan.blocking_body(sent))


def _blocking_response(ctx: RunContext, body: dict[str, Any]) -> Response:
    """Generation bodies are `json.dumps(jsonable_encoder(...))`: spaced, ASCII-escaped."""
    mimetype = "application/json; charset=utf-8" if ctx.modern else "application/json"
    return Response(json.dumps(body), status=200, content_type=mimetype)


def _aborted(sock: Any, graceful: bool = False) -> Response:
    """A response that drops the connection before any byte is written.

    The drop happens while gunicorn iterates the body, outside Flask's error
    handling, so no error page is attempted on the dead socket.
    """

    def body() -> Iterator[bytes]:
        if graceful and sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        abort_connection(None if graceful else sock)
        yield b""

    return Response(body())
