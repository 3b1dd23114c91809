"""Derived tables for the Bridge, kept in step with the event log inside the writer's transaction.

`interceptions` has one row per LLM call (from its `llm.request` and `llm.response` events), `tool_calls`
maps each tool call id to the interception that asked for it, `sessions` sums a session's calls. All three
can be rebuilt by replaying the log through `project_bridge_events`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatehouse.audit.events import Event
from gatehouse.store.db import Tx

REQUEST = "llm.request"
RESPONSE = "llm.response"
_USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def project_bridge_events(tx: Tx, events: Sequence[Event]) -> None:
    for event in events:
        if event.kind == REQUEST:
            _request(tx, event)
        elif event.kind == RESPONSE:
            _response(tx, event)


def _request(tx: Tx, event: Event) -> None:
    d = event.details
    refused = event.decision != "allow"
    tx.execute(
        "INSERT INTO interceptions (id, session_id, parent_id, started_at, ended_at, user_id, agent_id,"
        " token_id, client, client_session, provider, model, route, stream, decision, status, error,"
        " last_prompt)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.session,
            d.get("parent_interception"),
            event.ts,
            event.ts if refused else None,
            event.actor_user,
            event.actor_agent,
            event.actor_token,
            d.get("client"),
            d.get("client_session"),
            d.get("provider"),
            d.get("model"),
            d.get("route"),
            1 if d.get("stream") else 0,
            event.decision,
            d.get("status"),
            d.get("error"),
            d.get("last_prompt"),
        ),
    )
    tx.execute(
        "INSERT INTO sessions (id, user_id, agent_id, client, provider, model, started_at, last_at,"
        " interceptions, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (id) DO UPDATE SET"
        " last_at = excluded.last_at, model = excluded.model, interceptions = sessions.interceptions + 1,"
        " errors = sessions.errors + excluded.errors",
        (
            event.session,
            event.actor_user,
            event.actor_agent,
            d.get("client"),
            d.get("provider"),
            d.get("model"),
            event.ts,
            event.ts,
            1 if refused else 0,
        ),
    )


def _response(tx: Tx, event: Event) -> None:
    d = event.details
    usage = d.get("usage") or {}
    counts = [int(usage.get(k) or 0) for k in _USAGE]
    failed = d.get("error") is not None or int(d.get("status") or 0) >= 400
    tx.execute(
        "UPDATE interceptions SET ended_at = ?, status = ?, error = ?, latency_ms = ?, ttft_ms = ?,"
        " input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, cache_write_tokens = ?,"
        " reasoning_tokens = ? WHERE id = ?",
        (
            event.ts,
            d.get("status"),
            d.get("error"),
            d.get("latency_ms"),
            d.get("ttft_ms"),
            *counts,
            event.parent,
        ),
    )
    calls = d.get("tool_calls") or []
    tx.executemany(
        "INSERT INTO tool_calls (tool_call_id, interception_id, session_id, name) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        [(c["id"], event.parent, event.session, c["name"]) for c in calls if c.get("id")],
    )
    tx.execute(
        "UPDATE sessions SET last_at = ?, errors = errors + ?, tool_calls = tool_calls + ?,"
        " input_tokens = input_tokens + ?, output_tokens = output_tokens + ?,"
        " cache_read_tokens = cache_read_tokens + ?, cache_write_tokens = cache_write_tokens + ?,"
        " reasoning_tokens = reasoning_tokens + ? WHERE id = ?",
        (event.ts, 1 if failed else 0, len(calls), *counts, event.session),
    )
