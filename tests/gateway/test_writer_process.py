"""The Bridge with the audit writer process (`audit.writer_process = true`, the default from 4 CPUs): the
SDKs see nothing different, every call is recorded and projected, and killing the process loses nothing."""

from __future__ import annotations

import os
import signal

import anthropic
import pytest

from gatehouse.audit.verify import verify_database
from gatehouse.config import AuditSettings
from tests.gateway.conftest import Stack
from tests.stack import StackFactory

MODEL = "claude-sonnet-5"


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    return make_stack(audit=AuditSettings(writer_process=True))


def _client(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.anthropic_url, api_key=stack.token, max_retries=0)


def _ask(stack: Stack, prompt: str, *, stream: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    if stream:
        with _client(stack).messages.stream(model=MODEL, max_tokens=100, messages=messages) as s:  # type: ignore[arg-type]
            return s.get_final_message().id
    return _client(stack).messages.create(model=MODEL, max_tokens=100, messages=messages).id  # type: ignore[arg-type]


def test_calls_are_committed_by_a_separate_process(stack: Stack) -> None:
    link = stack.gh.writer._link
    assert link is not None and link.process.pid != os.getpid() and link.process.poll() is None
    _ask(stack, "first, plain", stream=False)
    _ask(stack, "second, streamed", stream=True)
    rows = stack.interceptions()  # the projection ran in the process's transaction
    assert [r["last_prompt"] for r in rows] == ["first, plain", "second, streamed"]
    assert all(r["status"] == 200 and r["output_tokens"] > 0 for r in rows)
    assert [e["kind"] for e in stack.events("llm.response")] == ["llm.response"] * 2
    assert verify_database(stack.db).ok


def test_killing_the_writer_process_loses_no_call(stack: Stack) -> None:
    link = stack.gh.writer._link
    assert link is not None
    _ask(stack, "before", stream=False)
    os.kill(link.process.pid, signal.SIGKILL)
    link.process.wait(5)
    # The server notices, writes in-process from then on, and every call is still recorded.
    for i in range(3):
        _ask(stack, f"after {i}", stream=i % 2 == 1)
    assert stack.gh.writer._link is None and stack.gh.writer.healthy
    prompts = [r["last_prompt"] for r in stack.interceptions()]
    assert prompts == ["before", "after 0", "after 1", "after 2"]
    assert verify_database(stack.db).ok
