"""Derived tables for the Bridge, brought up to date by the projector (`gatehouse.audit.projector`).

`tool_calls` maps each tool call id to the interception that asked for it (the Bridge links a tool result
to its call through it), `sessions` sums a session's calls. Both can be rebuilt by replaying the log
through `project_bridge_events`. A batch is applied in two statements: one insert per tool call, one
upsert per session with the batch's sums.

A call itself (its `llm.request` and `llm.response` events as one record: `calls_of`) is not stored: the
log holds it, and nothing reads it often enough to pay for a row and two index entries per call
(retention rebuilds a session's sums from the session's remaining events; docs/benchmarks.md, session 15).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from gatehouse.audit.events import Event
from gatehouse.store.db import Tx

REQUEST = "llm.request"
RESPONSE = "llm.response"
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

# A call's record (`calls_of`), in this order.
CALL_FIELDS = (
    "id",
    "session_id",
    "parent_id",
    "started_at",
    "user_id",
    "agent_id",
    "token_id",
    "client",
    "client_session",
    "provider",
    "model",
    "route",
    "stream",
    "decision",
    "last_prompt",
    "ended_at",
    "status",
    "error",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
_INSERT_TOOL_CALL = (
    "INSERT INTO tool_calls (tool_call_id, interception_id, session_id, name) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_UPSERT_SESSION = (
    "INSERT INTO sessions (id, user_id, agent_id, client, provider, model, started_at, last_at,"
    " interceptions, errors, tool_calls, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
    " reasoning_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET last_at = CASE WHEN excluded.last_at > sessions.last_at"
    " THEN excluded.last_at ELSE sessions.last_at END,"
    " model = COALESCE(excluded.model, sessions.model),"
    " interceptions = sessions.interceptions + excluded.interceptions,"
    " errors = sessions.errors + excluded.errors, tool_calls = sessions.tool_calls + excluded.tool_calls,"
    " input_tokens = sessions.input_tokens + excluded.input_tokens,"
    " output_tokens = sessions.output_tokens + excluded.output_tokens,"
    " cache_read_tokens = sessions.cache_read_tokens + excluded.cache_read_tokens,"
    " cache_write_tokens = sessions.cache_write_tokens + excluded.cache_write_tokens,"
    " reasoning_tokens = sessions.reasoning_tokens + excluded.reasoning_tokens"
)
# Positions in a call's record (CALL_FIELDS) and in a session row (_UPSERT_SESSION).
_ENDED_AT = CALL_FIELDS.index("ended_at")
_S_CLIENT, _S_PROVIDER, _S_MODEL, _S_LAST = 3, 4, 5, 7
_S_CALLS, _S_ERRORS, _S_TOOL_CALLS, _S_TOKENS = 8, 9, 10, 11


def project_bridge_events(tx: Tx, events: Sequence[Event]) -> None:
    tool_calls: list[tuple[str, str | None, str | None, str]] = []
    sessions: dict[str, list[Any]] = {}
    for event in events:
        if event.kind == REQUEST:
            _count_request(event, sessions)
        elif event.kind == RESPONSE:
            _count_response(event, tool_calls, sessions)
    tx.executemany(_INSERT_TOOL_CALL, tool_calls)
    tx.executemany(_UPSERT_SESSION, list(sessions.values()))


def calls_of(events: Iterable[Event]) -> list[dict[str, Any]]:
    """The LLM calls among `events` (in log order), one record each (CALL_FIELDS) from its request and,
    when it is among them, its response. A response whose request is not among them is no call."""
    calls: dict[str, list[Any]] = {}
    for event in events:
        if event.kind == REQUEST:
            calls[event.id] = _call(event)
        elif event.kind == RESPONSE and (row := calls.get(event.parent or "")) is not None:
            d = event.details
            row[_ENDED_AT:] = (
                event.ts,
                d.get("status"),
                d.get("error"),
                d.get("latency_ms"),
                d.get("ttft_ms"),
                *_usage(d),
            )
    return [dict(zip(CALL_FIELDS, row, strict=True)) for row in calls.values()]


def _call(request: Event) -> list[Any]:
    d = request.details
    return [
        request.id,
        request.session,
        d.get("parent_interception"),
        request.ts,
        request.actor_user,
        request.actor_agent,
        request.actor_token,
        d.get("client"),
        d.get("client_session"),
        d.get("provider"),
        d.get("model"),
        d.get("route"),
        1 if d.get("stream") else 0,
        request.decision,
        d.get("last_prompt"),
        request.ts if request.decision != "allow" else None,  # ended_at: a refused call ends where it starts
        d.get("status"),
        d.get("error"),
        None,
        None,
        *[0] * len(USAGE_FIELDS),
    ]


def is_error(call: dict[str, Any]) -> bool:
    """Does a call (a `calls_of` record) count among its session's errors: refused, or failed?"""
    return call["decision"] != "allow" or _failed(call["status"], call["error"])


def _failed(status: Any, error: Any) -> bool:
    return error is not None or int(status or 0) >= 400


def _usage(details: dict[str, Any]) -> list[int]:
    usage = details.get("usage") or {}
    return [int(usage.get(k) or 0) for k in USAGE_FIELDS]


def _count_request(event: Event, sessions: dict[str, list[Any]]) -> None:
    d = event.details
    session = _session(sessions, event, d.get("client"), d.get("provider"))
    session[_S_MODEL] = d.get("model") or session[_S_MODEL]
    session[_S_CALLS] += 1
    session[_S_ERRORS] += 1 if event.decision != "allow" else 0


def _count_response(
    event: Event,
    tool_calls: list[tuple[str, str | None, str | None, str]],
    sessions: dict[str, list[Any]],
) -> None:
    d = event.details
    requested = d.get("tool_calls") or []
    tool_calls += [(c["id"], event.parent, event.session, c["name"]) for c in requested if c.get("id")]
    session = _session(sessions, event, None, None)
    session[_S_ERRORS] += 1 if _failed(d.get("status"), d.get("error")) else 0
    session[_S_TOOL_CALLS] += len(requested)
    for i, count in enumerate(_usage(d)):
        session[_S_TOKENS + i] += count


def _session(sessions: dict[str, list[Any]], event: Event, client: Any, provider: Any) -> list[Any]:
    """The batch's row for the event's session: what to insert if the session is new, else to add."""
    key = event.session or ""
    row = sessions.get(key)
    if row is None:
        row = sessions[key] = [
            event.session,
            event.actor_user,
            event.actor_agent,
            client,
            provider,
            None,
            event.ts,
            event.ts,
            *[0] * 8,
        ]
    else:
        row[_S_LAST] = max(row[_S_LAST], event.ts)
        row[_S_CLIENT] = row[_S_CLIENT] or client
        row[_S_PROVIDER] = row[_S_PROVIDER] or provider
    return row
