"""Reading recorded sessions back: the list with filters, and one session's interceptions in order.

Shared by the CLI and the REST API, so both answer the same question the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from gatehouse.audit.queries import MAX_LIMIT, EventFilter, timeline
from gatehouse.bridge.projection import REQUEST, RESPONSE
from gatehouse.store.db import Database, Row


@dataclass(frozen=True, slots=True)
class SessionFilter:
    user: str | None = None  # name or id
    agent: str | None = None  # name or id
    model: str | None = None
    provider: str | None = None
    client: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    limit: int = 50


_SESSION_SELECT = (
    "SELECT s.id, u.name AS user, a.name AS agent, s.client, s.provider, s.model, s.started_at, s.last_at,"
    " s.interceptions, s.errors, s.tool_calls, s.input_tokens, s.output_tokens, s.cache_read_tokens,"
    " s.cache_write_tokens, s.reasoning_tokens FROM sessions s LEFT JOIN users u ON u.id = s.user_id"
    " LEFT JOIN agents a ON a.id = s.agent_id"
)


def list_sessions(db: Database, f: SessionFilter) -> list[Row]:
    clauses: list[str] = []
    params: list[Any] = []
    if f.user:
        clauses.append("(u.name = ? OR s.user_id = ?)")
        params += [f.user, f.user]
    if f.agent:
        clauses.append("(a.name = ? OR s.agent_id = ?)")
        params += [f.agent, f.agent]
    for column, value in (("s.model", f.model), ("s.provider", f.provider), ("s.client", f.client)):
        if value:
            clauses.append(f"{column} = ?")
            params.append(value)
    if f.since_us is not None:
        clauses.append("s.last_at >= ?")
        params.append(f.since_us)
    if f.until_us is not None:
        clauses.append("s.started_at <= ?")
        params.append(f.until_us)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    params.append(max(1, min(f.limit, 1000)))
    return db.query(_SESSION_SELECT + where + " ORDER BY s.last_at DESC LIMIT ?", params)


def show_session(db: Database, session_id: str) -> dict[str, Any] | None:
    """The session summary and its interceptions in order, each with its request and response details."""
    summary = db.query_one(_SESSION_SELECT + " WHERE s.id = ?", (session_id,))
    if summary is None:
        return None
    by_id: dict[str, dict[str, Any]] = {}
    order: list[dict[str, Any]] = []
    for row in _session_events(db, session_id):
        details = row["details"]
        if row["kind"] == "llm.request":
            item = {"id": row["id"], "started_at": row["ts"], "decision": row["decision"], "request": details}
            item["response"] = None
            by_id[row["id"]] = item
            order.append(item)
        elif row["parent"] in by_id:
            by_id[row["parent"]]["response"] = details
            by_id[row["parent"]]["ended_at"] = row["ts"]
    return {"session": summary, "interceptions": order}


def _session_events(db: Database, session_id: str) -> Iterator[dict[str, Any]]:
    """The session's requests and responses in log order, through the audit timeline's indexes."""
    f = EventFilter(session=session_id, kinds=(REQUEST, RESPONSE), limit=MAX_LIMIT)
    while True:
        page = timeline(db, f)
        yield from page.events
        if page.next_cursor is None:
            return
        f = replace(f, cursor=page.next_cursor)
