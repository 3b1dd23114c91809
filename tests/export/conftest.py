"""Helpers for export tests: a store, events written through the real writer, an exporter running as a
background task, and waiting for a receiver to see something."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gatehouse.audit.events import Event, new_id
from gatehouse.audit.export.exporter import Exporter
from gatehouse.audit.writer import AuditWriter
from gatehouse.store.db import Database


def write(db: Database, events: list[Event]) -> list[Event]:
    """Commit events through a short-lived writer (as another process would)."""
    writer = AuditWriter(db)
    writer.start()
    try:
        writer.append_sync(*events)
    finally:
        writer.close()
    return events


def ticks(n: int, start: int = 0) -> list[Event]:
    return [Event(kind="test.tick", details={"n": start + i}) for i in range(n)]


def interception(
    *,
    session: str = "sess-1",
    model: str = "claude-sonnet-5",
    provider: str = "anthropic",
    route: str = "messages",
    tool_calls: list[dict[str, Any]] | None = None,
    status: int = 200,
    error: str | None = None,
    latency_ms: float = 1500.0,
    ttft_ms: float | None = 120.0,
    parent_interception: str | None = None,
) -> tuple[Event, Event]:
    """An llm.request and its llm.response, shaped as the Bridge records them."""
    request_id = new_id()
    actor = {"actor_user": "u-alice", "actor_agent": "a-bot", "actor_token": "t-1", "session": session}
    request = Event(
        kind="llm.request",
        id=request_id,
        parent=parent_interception,
        resource=f"llm:{provider}/{model}",
        details={
            "route": route,
            "provider": provider,
            "client": "claude-code",
            "client_session": None,
            "model": model,
            "stream": True,
            "parent_interception": parent_interception,
            "max_tokens": 1024,
            "tools_offered": 2,
            "last_prompt": "list the files",
            "tool_results": [],
            "request_bytes": 512,
        },
        **actor,
    )
    request.ts -= int(latency_ms * 1000)
    response = Event(
        kind="llm.response",
        decision="error" if error else "allow",
        parent=request_id,
        resource=f"llm:{provider}/{model}",
        details={
            "status": status,
            "error": error,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "response_id": "msg_01abc",
            "model": model,
            "stop_reason": "tool_use" if tool_calls else "end_turn",
            "usage": {
                "input_tokens": 100,
                "output_tokens": 40,
                "cache_read_tokens": 7,
                "cache_write_tokens": 3,
                "reasoning_tokens": 0,
            },
            "tool_calls": tool_calls or [],
            "thinking": [],
        },
        **actor,
    )
    return request, response


def denied_request(session: str = "sess-1", model: str = "gpt-9") -> Event:
    return Event(
        kind="llm.request",
        decision="deny",
        resource=f"llm:openai/{model}",
        actor_user="u-alice",
        actor_agent="a-bot",
        actor_token="t-1",
        session=session,
        details={
            "route": "chat_completions",
            "provider": "openai",
            "model": model,
            "stream": False,
            "status": 403,
            "error": f"model {model!r} is not allowed",
        },
    )


@contextlib.asynccontextmanager
async def running(exporter: Exporter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(exporter.run())
    try:
        yield task
    finally:
        exporter.stop()
        await asyncio.wait_for(task, 15)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
